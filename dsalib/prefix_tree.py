"""Which prompt openings the frozen-prefix pass computes once and shares.

The prompts of one study repeat long openings: every question's prompt for a
subgroup starts with the same background block, and subgroups that agree on
their first background answers share even more.  A causal model's hidden
states at a position depend only on the tokens up to it, so a shared opening
can be run once and its key-value cache reused for every prompt that starts
with it (:meth:`dsalib.engine.OptionModel.prepare`).

:func:`plan_prefix_tree` decides what to share.  It builds the radix tree of
the prompts' token ids and keeps a node (one extra forward pass, batch 1) only
where it saves at least ``min_saving`` token positions in its subtree.  Every
prompt keeps at least its last token out of any shared node, since the
answer position's hidden state is read from the prompt's own pass.

The plan only changes which tokens are computed together: in exact arithmetic
the hidden states are the same; in floating point they differ by rounding, as
they already do when a prompt is batched with different neighbours
(``tests/test_prefix_tree.py``; the README gives the effect on the ESS9 results).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence


@dataclass
class PrefixNode:
    """A shared opening: ``tokens`` run once after the parent's path.

    ``leaves``: prompts (keys of the plan's input) whose remaining tokens are
    run in batches on top of this node's path; ``children``: deeper shared
    openings.  ``depth`` is the path length before ``tokens``.
    """

    tokens: tuple[int, ...]
    depth: int
    leaves: list = field(default_factory=list)
    children: list["PrefixNode"] = field(default_factory=list)

    @property
    def end(self) -> int:
        """Length of the path through this node."""
        return self.depth + len(self.tokens)

    def walk(self):
        """This node and every node below it, parents first."""
        yield self
        for child in self.children:
            yield from child.walk()


def _common_length(seqs: Sequence[Sequence[int]], start: int) -> int:
    """Length of the common prefix of ``seqs`` (all agree on the first ``start`` tokens)."""
    shortest = min(len(s) for s in seqs)
    first = seqs[0]
    k = start
    while k < shortest and all(s[k] == first[k] for s in seqs):
        k += 1
    return k


#: Deepest chain of shared openings the plan makes (each level is a recursion; deeper prompts become leaves).
MAX_LEVELS = 64


def _plan(rows: list, seqs: Mapping, depth: int, min_saving: int, level: int = 0) -> tuple[list, list, int]:
    """Leaves, child nodes and token positions saved for ``rows``, which share their first ``depth`` tokens."""
    if level >= MAX_LEVELS:
        return list(rows), [], 0
    by_next = defaultdict(list)
    for r in rows:
        by_next[seqs[r][depth]].append(r)
    leaves, children, saved = [], [], 0
    for group in by_next.values():
        if len(group) > 1:
            members = [seqs[r] for r in group]
            # every prompt keeps at least its last token for its own pass
            end = min(_common_length(members, depth), min(len(s) for s in members) - 1)
            if end > depth:
                sub_leaves, sub_children, sub_saved = _plan(group, seqs, end, min_saving, level + 1)
                total = (end - depth) * (len(group) - 1) + sub_saved
                if total >= min_saving:
                    node = PrefixNode(tuple(members[0][depth:end]), depth, sub_leaves, sub_children)
                    children.append(node)
                    saved += total
                    continue
        leaves += group
    return leaves, children, saved


def plan_prefix_tree(seqs: Mapping, min_saving: int = 32) -> PrefixNode:
    """The sharing plan for ``seqs`` (key -> token ids, each non-empty).

    The root has no tokens: its ``leaves`` are run from scratch, as without
    sharing.  Each of its ``children`` is run from scratch as batch 1, and
    so on down the tree.  Every key appears as a leaf exactly once, below a
    path that is a proper prefix of its tokens.
    """
    if min_saving < 1:
        raise ValueError(f"min_saving must be ≥ 1, got {min_saving}")
    empty = [k for k, s in seqs.items() if len(s) == 0]
    if empty:
        raise ValueError(f"prompts {empty[:5]} have no tokens")
    leaves, children, _ = _plan(list(seqs), seqs, 0, min_saving)
    return PrefixNode((), 0, leaves, children)


def plan_cost(plan: PrefixNode, seqs: Mapping) -> int:
    """Token positions the plan runs through the model (without sharing: the sum of the lengths)."""
    total = 0
    for node in plan.walk():
        total += len(node.tokens) + sum(len(seqs[r]) - node.end for r in node.leaves)
    return total
