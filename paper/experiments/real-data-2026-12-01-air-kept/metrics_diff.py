"""Every metric of two runs' outputs/metrics/*.json that differs, as tab-separated file, metric, run A, run B.

    python metrics_diff.py RUN_A RUN_B
"""
import json
import sys
from pathlib import Path


def flat(tree, prefix=""):
    """Nested metrics as {"a.b.c": number}; lists and strings are left out."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flat(value, name))
        elif isinstance(value, (int, float, bool)) or value is None:
            out[name] = value
    return out


run_a, run_b = Path(sys.argv[1]), Path(sys.argv[2])
for file_b in sorted((run_b / "outputs/metrics").glob("*.json")):
    file_a = run_a / "outputs/metrics" / file_b.name
    a = flat(json.loads(file_a.read_text())) if file_a.is_file() else {}
    b = flat(json.loads(file_b.read_text()))
    for name in sorted(set(a) | set(b)):
        value_a, value_b = a.get(name), b.get(name)
        if value_a != value_b and not (isinstance(value_a, float) and isinstance(value_b, float) and abs(value_a - value_b) < 1e-9):
            print(f"{file_b.stem}\t{name}\t{value_a}\t{value_b}")
