"""Logit adjustment by the co-occurrence prior of declared factor heads.

Heads the user declares as independent factors (say char and family of a
typeface set) co-occur in the training data in a pattern the world does not
keep: a pair held out of training never occurs. A plain head learns that
pattern ("this family never comes with that char") and falls to chance on
the held-out pairs. During training only, each factor head's logits get the
log prior of its class given the other factors' labels of the same row,

  z'_a = z_a + log p(a) + sum_b [log p(a | b) - log p(a)]   (b labelled)

(with one other factor exactly log p(a | b); a missing label adds nothing
and leaves the marginal log p(a)). The loss is the cross-entropy of
softmax(z'), so the head's own logits z carry no reason to encode what the
other factors' values predict about a: that part is supplied by the prior.
At inference the raw softmax(z) is used. This is Menon et al.'s logit
adjustment (ICLR 2021, "Long-tail learning via logit adjustment") with the
class prior conditioned on the other factors; the per-factor sum is the
naive-Bayes combination of pointwise mutual information terms.

Counts are smoothed (add ``SMOOTHING`` to each cell), so a pair never seen
still has a finite prior. Heads that are functions of each other (a colour
and a suit) must not be declared: the prior would supply the evidence a head
needs on its own, and its raw logits would be left without it.

numpy only; data/pipeline.py turns a row's labels into its log prior.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from mlc_keras.core import heads as heads_lib

SMOOTHING = 1.0


@dataclasses.dataclass(frozen=True)
class FactorPrior:
  """The log prior of one factor head's classes.

  ``log_marginal``: [k] log p(a). ``pmi``: {other factor head: [k_b + 1, k]}
  where row 0 (a missing label of b) is zero and row j + 1 is
  log p(a | b = j) - log p(a).
  """

  head: str
  log_marginal: np.ndarray
  pmi: Mapping[str, np.ndarray]

  def log_prior(self, labels: Mapping[str, np.ndarray]) -> np.ndarray:
    """[n, k] log prior for rows whose other factors' labels (-1: missing)
    are ``labels[b]`` ([n] ints)."""
    n = len(next(iter(labels.values()))) if labels else 0
    out = np.tile(self.log_marginal, (n, 1))
    for b, table in self.pmi.items():
      out = out + table[np.asarray(labels[b]) + 1]
    return out


def check_factor_heads(schema: heads_lib.LabelSchema,
                       factor_heads: Sequence[str]) -> tuple[str, ...]:
  """The declared factor heads, checked: at least two, each a single-label
  head of the schema, none twice. Raises SchemaError naming the field."""
  names = tuple(factor_heads)
  if not names:
    return ()
  error = heads_lib.SchemaError
  if len(names) < 2:
    raise error(f"factor_heads: at least two heads are needed (a head's "
                f"prior is conditioned on the others), got {list(names)}")
  if len(set(names)) != len(names):
    raise error(f"factor_heads: a head is named twice in {list(names)}")
  for name in names:
    if name not in schema.names:
      raise error(f"factor_heads: {name!r} is not a head (heads: "
                  f"{', '.join(schema.names)})")
    if not schema.head(name).kind_impl.single_label:
      raise error(f"factor_heads: {name!r} is a "
                  f"{schema.head(name).kind_impl.noun}; only single-label "
                  "heads can be factors")
  return names


def priors(labels: np.ndarray, schema: heads_lib.LabelSchema,
           factor_heads: Sequence[str],
           smoothing: float = SMOOTHING) -> dict[str, FactorPrior]:
  """Each factor head's prior from the training labels ([n, label_width]
  ints, -1 for a missing label, as data/sources gives them).

  p(a) counts the rows labelled for a; p(a | b) the rows labelled for both,
  each count plus ``smoothing`` (so a class or pair never seen gets a small
  finite probability)."""
  names = check_factor_heads(schema, factor_heads)
  slices = schema.label_slices()
  cols = {h: np.asarray(labels)[:, slices[h].start] for h in names}
  out = {}
  for a in names:
    k = schema.head(a).num_classes
    ya = cols[a]
    marginal = np.bincount(ya[ya >= 0], minlength=k) + smoothing
    log_marginal = np.log(marginal / marginal.sum())
    pmi = {}
    for b in names:
      if b == a:
        continue
      kb = schema.head(b).num_classes
      both = (ya >= 0) & (cols[b] >= 0)
      joint = np.zeros((kb, k))
      np.add.at(joint, (cols[b][both], ya[both]), 1.0)
      joint += smoothing
      conditional = np.log(joint / joint.sum(axis=1, keepdims=True))
      table = np.zeros((kb + 1, k))
      table[1:] = conditional - log_marginal
      pmi[b] = table.astype(np.float32)
    out[a] = FactorPrior(a, log_marginal.astype(np.float32), pmi)
  return out
