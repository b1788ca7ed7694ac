"""Plots the benchmark outputs saved in docs/bench/ into docs/benchmarks.png.

Run from the repository root after saving each bench's output (see BENCHMARKS.md):
    python3 benches/plot.py
Needs matplotlib.
"""

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BENCH = Path("docs/bench")
UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}


def rows(name, columns):
    """Lines of `columns` numbers in a table printed by a bench."""
    out = []
    for line in (BENCH / name).read_text().splitlines():
        fields = line.split()
        if len(fields) == columns and all(re.fullmatch(r"[0-9.]+", f) for f in fields):
            out.append([float(f) for f in fields])
    return out


def criterion(name, group):
    """{parameter: median ms} from criterion's `group/param  time: [lo mid hi]` lines."""
    out = {}
    text = (BENCH / name).read_text()
    pattern = rf"{group}/(\S+)\s+time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]"
    for param, value, unit in re.findall(pattern, text):
        out[param] = float(value) * UNITS[unit]
    return out


def cold(name):
    """{label: seconds} from kernel_load's lines."""
    out = {}
    for line in (BENCH / name).read_text().splitlines():
        m = re.match(r"\s+(.+?):\s+([0-9.]+) s", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))

compile_ms = criterion("compile.txt", "compile")
memory = rows("peak_memory.txt", 4)
ax = axes[0]
sizes = [int(k) for k in compile_ms]
ax.loglog(sizes, list(compile_ms.values()), "o-", label="compile time (ms, criterion)")
ax.loglog([r[0] for r in memory], [r[3] for r in memory], "s--", label="svcnft compile max RSS (MiB)")
ax.axhline(150, color="grey", linestyle=":", label="targets at 10k: 150 ms / 300 MiB")
ax.axhline(300, color="grey", linestyle=":")
ax.set_xlabel("services (10 endpoints each, 50 nodes)")
ax.set_title("Compile: parse + check + plan + lower + render")
ax.legend(fontsize=8)

change = rows("apply.txt", 7)
ax = axes[1]
services = [r[0] for r in change]
ax.loglog(services, [r[3] for r in change], "o-", label="diff")
ax.loglog(services, [r[4] for r in change], "o-", label="diff + encode + commit")
ax.loglog(services, [r[5] for r in change], "o-", label="whole apply")
ax.loglog(services, [r[6] for r in change], "s--", label="read-back of our tables")
ax.axhline(5, color="grey", linestyle=":", label="target: 5 ms change, 100 ms read-back")
ax.axhline(100, color="grey", linestyle=":")
for r in change:
    ax.annotate(f"{int(r[1])} msgs", (r[0], r[4]), fontsize=7, textcoords="offset points", xytext=(4, -10))
ax.set_xlabel("services")
ax.set_ylabel("ms")
ax.set_title("One endpoint changed; read-back")
ax.legend(fontsize=8)

ax = axes[2]
loads = cold("kernel_load.txt")
no_affinity = cold("kernel_load_no_affinity.txt")
labels, values, colors = [], [], []
for label, seconds in loads.items():
    labels.append(label.replace(" (netlink, compile included)", "\n(netlink, with compile)"))
    values.append(seconds)
    colors.append("tab:red" if "kube-proxy" in label else "tab:blue")
for label, seconds in no_affinity.items():
    labels.append(label.replace(" (netlink, compile included)", "\n(netlink, with compile)") + "\nno affinity")
    values.append(seconds)
    colors.append("tab:red" if "kube-proxy" in label else "tab:green")
ax.barh(labels, values, color=colors)
for i, v in enumerate(values):
    ax.text(v, i, f" {v:.1f} s", va="center", fontsize=8)
ax.set_xlabel("seconds, each into a fresh namespace")
ax.set_title("Cold load, 10k services × 10 endpoints")
ax.tick_params(axis="y", labelsize=7)

fig.tight_layout()
fig.savefig("docs/benchmarks.png", dpi=110)
print("wrote docs/benchmarks.png")
