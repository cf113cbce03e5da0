"""The race in report.html: each candidate's score ± SE, and why it was kept or cut."""

from __future__ import annotations

from transferkit.evaluation.reports.race_section import race_section

AUTO = {"winner": "full-llrd", "cost_bound": 2.05, "rungs": [{"end": 15, "keep": 2}], "candidates": [
    {"name": "freeze", "strategy": "freeze", "seconds": 1.0, "rungs": [
        {"epochs": 15, "score": 0.575, "se": 0.078, "verdict": {"kept": False, "why": "cut: rank 2 of 2, keep 1; "
                                                               "0.025 behind full-llrd (0.4 paired SE)"}}]},
    {"name": "full-llrd", "strategy": "full", "seconds": 9.0, "rungs": [
        {"epochs": 15, "score": 0.600, "se": 0.072, "verdict": {"kept": True, "why": "best of 2"}}]}]}


def test_the_race_section_gives_scores_verdicts_and_the_rule():
    html = race_section(AUTO)
    assert "0.575 ± 0.078 (cut)" in html and "0.600 ± 0.072" in html and "full-llrd <b>(winner)</b>" in html
    assert "The choice at the end (epoch 15)" in html and "0.4 paired SE" in html
    assert "an exact tie goes to the cheaper plan" in html and "2.05×" in html


def test_a_race_recorded_before_scores_shows_loss_and_accuracy():
    old = {"winner": "freeze", "rungs": [{"end": 2, "keep": 1}], "candidates": [
        {"name": "freeze", "strategy": "freeze", "rungs": [{"epochs": 2, "val_loss": 0.3, "val_acc": 0.9}]}]}
    assert "0.3000 / 0.900" in race_section(old)
    assert race_section({"candidates": []}) == ""
