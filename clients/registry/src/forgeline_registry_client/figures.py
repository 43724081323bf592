"""A version's measured figures (its lineage ``metrics``) as a person reads them.

The converter records on each GGUF it registers what it measured against the full-precision
intermediate on the same text: ``perplexity`` and ``perplexity_reference`` (lower is better),
and, when KL divergence was asked for, ``kl_divergence_mean`` (0 is identical) and
``same_top_token_rate`` (the share of tokens whose most likely next token did not change). The
CLI's ``models show`` and a fine-tuning job's quality card say them the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["CONVERSION_FIGURES", "describe_conversion_figures"]

#: The lineage metrics a conversion measures, in the order they are told.
CONVERSION_FIGURES = (
    "perplexity",
    "perplexity_reference",
    "kl_divergence_mean",
    "same_top_token_rate",
)


def describe_conversion_figures(metrics: Mapping[str, float]) -> str:
    """``perplexity 12.31 (full precision 12.30), KL divergence 0.0017, same top token 98.4%``,
    or '' when the version has none of them."""
    parts: list[str] = []
    if "perplexity" in metrics:
        text = f"perplexity {metrics['perplexity']:.2f}"
        if "perplexity_reference" in metrics:
            text += f" (full precision {metrics['perplexity_reference']:.2f})"
        parts.append(text)
    if "kl_divergence_mean" in metrics:
        parts.append(f"KL divergence {metrics['kl_divergence_mean']:.4f}")
    if "same_top_token_rate" in metrics:
        parts.append(f"same top token {100 * metrics['same_top_token_rate']:.1f}%")
    return ", ".join(parts)
