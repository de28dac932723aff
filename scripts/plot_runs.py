#!/usr/bin/env python3
"""Draws the curves `mmfl plot` computed: per setting, the mean over seeds as a line and the
95% confidence band as a shaded area. Input: the JSON of make_curves (engine/report.cpp);
output: a .png or .svg. Exit code 3 when matplotlib is missing, 2 on bad input."""
import argparse
import json
import sys


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True, help="curves JSON written by mmfl plot")
    p.add_argument("--out", required=True, help="FILE.png or FILE.svg")
    a = p.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: small, searchable
        import matplotlib.pyplot as plt
    except ImportError:
        print("mmfl plot: matplotlib is not installed in " + sys.executable, file=sys.stderr)
        return 3
    with open(a.data) as f:
        d = json.load(f)
    series = [s for s in d["series"] if s["x"]]
    if not series:
        print("mmfl plot: no points to draw", file=sys.stderr)
        return 2
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in series:
        label = "%s (%d seed%s)" % (s["label"], s["n"], "" if s["n"] == 1 else "s")
        (line,) = ax.plot(s["x"], s["mean"], label=label, linewidth=1.6)
        if s["n"] > 1:
            ax.fill_between(s["x"], s["lo"], s["hi"], color=line.get_color(), alpha=0.2,
                            linewidth=0)
    ax.set_xlabel(d["xlabel"])
    ax.set_ylabel(d["ylabel"])
    ax.set_title("%s: mean and 95%% CI over seeds" % d["metric"])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    try:
        fig.savefig(a.out)
    except OSError as e:
        print("mmfl: error: cannot write the figure '%s': %s" % (a.out, e.strerror or e),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
