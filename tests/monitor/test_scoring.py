"""Scores per campaign style: accounts that sent only cover traffic are counted, and the style is also scored
without them, beside (never instead of) the score over all its accounts."""

from __future__ import annotations

import pytest

from alambic.monitor.scoring import score_by_style


def _label(style: str, extraction: int | None) -> dict:
    kind = "benign" if style == "person" else "campaign"
    return {
        "kind": kind,
        "style": style,
        "campaign_id": None if kind == "benign" else "c1",
        "extraction_requests": extraction,
    }


def test_a_style_s_accounts_that_sent_only_cover_traffic_are_counted_and_scored_apart():
    labels = {f"b{i}": _label("person", None) for i in range(10)}
    labels |= {"h1": _label("hydra", 3), "h2": _label("hydra", 1), "cover": _label("hydra", 0)}
    scores = {f"b{i}": i / 10 for i in range(10)} | {"h1": 0.95, "h2": 0.97, "cover": 0.0}
    found = score_by_style(scores, labels)["hydra"]
    assert found["accounts"] == 3 and found["accounts_cover_only"] == 1
    assert found["auc"] == pytest.approx((2 * 10 + 0.5) / 30)  # the cover-only account ties the benign one at 0
    assert found["auc_sent_extraction"] == 1.0


def test_labels_without_request_counts_score_every_account_as_one_that_extracted():
    labels = {f"b{i}": {"kind": "benign", "style": "person", "campaign_id": None} for i in range(4)}
    labels["h"] = {"kind": "campaign", "style": "hydra", "campaign_id": "c1"}
    found = score_by_style({"h": 1.0}, labels)["hydra"]
    assert found["accounts_cover_only"] == 0 and found["auc_sent_extraction"] == found["auc"] == 1.0
