"""The nodule ground truth 01_drr writes (``nodules.csv``): one row per nodule inserted into a DRR's CT.

Centres are in pixels of the DRR (rows down, columns right, pixel centres at integers), boxes
end-exclusive; ``contrast`` is the mean line-integral difference the nodule makes inside its mask.
"""

NODULE_COLUMNS = ("drr_id", "patient_id", "nodule_id", "type", "source", "centre_ras_mm_x", "centre_ras_mm_y",
                  "centre_ras_mm_z", "diameter_mm", "centre_row_px", "centre_col_px", "bbox_row0", "bbox_col0",
                  "bbox_row1", "bbox_col1", "contrast")

NODULE_LOCATION_COLUMNS = ("drr_id", "nodule_id", "centre_row_px", "centre_col_px",
                           "bbox_row0", "bbox_col0", "bbox_row1", "bbox_col1")
"""What locating a nodule in its DRR needs (a subset of :data:`NODULE_COLUMNS`)."""
