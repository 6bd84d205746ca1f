"""How well the monitor does per campaign style: ROC AUC and TPR at a fixed FPR on account scores, and how many
requests a style's campaigns sent before the replay first flagged them."""

from __future__ import annotations

import math
from collections.abc import Mapping

from sklearn.metrics import roc_auc_score

FALSE_POSITIVE_RATES = {"tpr_at_0.1pct_fpr": 0.001, "tpr_at_1pct_fpr": 0.01}


def tpr_at_fpr(benign: list[float], flagged: list[float], fpr: float) -> float:
    """Share of `flagged` scored above the threshold that lets at most `fpr` of `benign` through."""
    ranked = sorted(benign, reverse=True)
    allowed = math.floor(fpr * len(ranked))  # benign accounts that may score above the threshold
    threshold = ranked[allowed] if allowed < len(ranked) else -math.inf
    return sum(score > threshold for score in flagged) / len(flagged)


def score_by_style(scores: dict[str, float], labels: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per campaign style (accounts of that style against every benign account); beside the scores over all of
    them, the style's accounts that sent only cover traffic (labels' `extraction_requests` of 0: none of the
    campaign's prompts, so none of its evidence) and the AUC over the others."""
    benign = [scores.get(a, 0.0) for a, label in labels.items() if label["kind"] == "benign"]
    styles = sorted({label["style"] for label in labels.values() if label["kind"] == "campaign"})
    results = {}
    for style in styles:
        accounts = {a: label for a, label in labels.items() if label["style"] == style}
        flagged = [scores.get(a, 0.0) for a in accounts]
        extracting = [scores.get(a, 0.0) for a, label in accounts.items() if label.get("extraction_requests") != 0]
        results[style] = {
            "accounts": len(flagged),
            "auc": _auc(benign, flagged),
            **{name: tpr_at_fpr(benign, flagged, rate) for name, rate in FALSE_POSITIVE_RATES.items()},
            "accounts_cover_only": len(flagged) - len(extracting),
            "auc_sent_extraction": _auc(benign, extracting) if extracting else None,
        }
    return results


def _auc(benign: list[float], flagged: list[float]) -> float:
    return float(roc_auc_score([0] * len(benign) + [1] * len(flagged), benign + flagged))


def before_flag_by_style(
    counts: Mapping[str, int | None], style_of: Mapping[str, str], target: int
) -> dict[str, dict[str, int | None]]:
    """Per style, from each campaign's requests before its first flag (`replay.campaign_requests_before_flag`):
    the worst campaign's count (None when one was never flagged: it was never stopped), the campaigns, and
    those flagged before `target` of their requests (a campaign never flagged is not)."""
    styles: dict[str, list[int | None]] = {}
    for campaign, count in counts.items():
        styles.setdefault(style_of[campaign], []).append(count)
    return {
        style: {
            "requests_before_flag": None if None in found else max(found),
            "campaigns": len(found),
            "flagged_before_target": sum(count is not None and count < target for count in found),
        }
        for style, found in sorted(styles.items())
    }
