"""Plot accept rate and p99 latency against concurrency (bench/results.json from
``run.py --sweep``), mail2sms beside the bare aiosmtpd baseline, to docs/performance.png.

Needs matplotlib: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent


def main() -> None:
    results = json.loads((HERE / "results.json").read_text())
    fig, (rate_ax, p99_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, runs in results.items():
        sessions = [r["sessions"] for r in runs]
        rate_ax.plot(sessions, [r["rate"] for r in runs], marker="o", label=name)
        p99_ax.plot(sessions, [r["p99_ms"] for r in runs], marker="o", label=name)
    rate_ax.set(xlabel="concurrent SMTP sessions", ylabel="accepted msg/s", title="Accept rate")
    p99_ax.set(xlabel="concurrent SMTP sessions", ylabel="ms", title="p99 end of DATA to 250")
    for ax in (rate_ax, p99_ax):
        ax.set_xscale("log")
        ax.grid(visible=True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = HERE.parent / "docs" / "performance.png"
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main()
