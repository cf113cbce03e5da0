"""The `finetune=auto` race in report.html: each candidate's score ± SE at each cut, and why it was kept or cut."""

from __future__ import annotations

from html import escape


def race_section(auto: dict) -> str:
    """An HTML table of the race (`results.json` -> auto) and, per cut, the rule's verdicts."""
    candidates = auto.get("candidates") or []
    ends = [int(r["end"]) for r in auto.get("rungs") or []]
    if not candidates or not ends:
        return ""
    head = "".join(f"<th>{escape(h)}</th>" for h in ["candidate", "strategy", *[f"epoch {e}" for e in ends], "seconds"])
    rows, cuts = [], {}
    for entry in candidates:
        by_end = {int(r["epochs"]): r for r in entry.get("rungs", [])}
        cells = [score_cell(by_end.get(end)) for end in ends]
        name = escape(str(entry["name"])) + (" <b>(winner)</b>" if entry["name"] == auto.get("winner") else "")
        rows.append(f"<tr><td>{name}</td><td>{escape(str(entry.get('strategy', '')))}</td>"
                    + "".join(f"<td>{c}</td>" for c in cells) + f"<td>{entry.get('seconds', '')}</td></tr>")
        for rung in entry.get("rungs", []):
            if "verdict" in rung:
                cuts.setdefault(int(rung["epochs"]), []).append(f"{entry['name']}: {rung['verdict']['why']}")
    verdicts = "".join(f"<p>{'The choice at the end' if end == ends[-1] else 'Cut'} (epoch {end}):</p><ul>"
                       + "".join(f"<li>{escape(w)}</li>" for w in whys) + "</ul>" for end, whys in sorted(cuts.items()))
    rule = escape(str(auto.get("rule") or "the highest validation score survives; an exact tie goes to the cheaper plan"))
    metric = escape(str(auto.get("metric") or "the run's validation metric"))  # val/acc, val/map, ...
    return (f"<h3>The race</h3><p>Score: {metric} ± bootstrap SE over validation images. "
            f"Rule: {rule}. Worst-case cost bound: {auto.get('cost_bound')}× trainer.max_epochs.</p>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table>{verdicts}")


def score_cell(rung: dict | None) -> str:
    if rung is None:
        return "-"
    if "score" not in rung:  # a race recorded by an older transferkit
        return f"{rung.get('val_loss', 0):.4f} / {rung.get('val_acc', 0):.3f}"
    kept = rung.get("verdict", {}).get("kept", True)
    return f"{rung['score']:.3f} ± {rung['se']:.3f}" + ("" if kept else " (cut)")
