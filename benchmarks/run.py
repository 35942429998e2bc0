"""`make bench`: print the benchmark figures and write them to benchmarks/results.json.

Only the polling measurement exists so far; the others of the benchmark plan are still to come.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from benchmarks.polling import measure

OUT = Path(__file__).parent / "results.json"


def main() -> None:
    warnings.filterwarnings("ignore")
    results: dict[str, float] = {}
    print(f"{'batch ends after':>18} {'transitions':>12} {'checks':>7} {'delay s':>9} {'limit s':>9}")
    for label, seconds in (("1 minute", 60), ("1 hour", 3600), ("23 hours", 23 * 3600)):
        m = measure(seconds)
        row = (label, m["transitions"], m["checks"], m["delay_seconds"], m["delay_limit_seconds"])
        print("{:>18} {:>12} {:>7} {:>9} {:>9}".format(*row))
        key = label.replace(" ", "_")
        results[f"polling_transitions_{key}"] = m["transitions"]
        results[f"polling_delay_seconds_{key}"] = m["delay_seconds"]
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
