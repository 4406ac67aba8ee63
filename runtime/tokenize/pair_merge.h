// Greedy merging of adjacent tokens, best pair first: the core of both BPE (priority = merge
// rank) and llama2.c's tokenizer (priority = minus the merged token's score).
//
// `ids` are the initial symbols (characters or bytes); lookup(a, b) returns the merge of the
// adjacent pair (a, b) as {priority, merged id}, or nothing. The pair with the lowest priority
// is merged first (leftmost among equals), its neighbours are reconsidered, and so on until no
// pair merges. A heap of candidates keeps it O(n log n); candidates made stale by an earlier
// merge are skipped when popped. The result is appended to `out`.
#pragma once

#include <cstdint>
#include <optional>
#include <queue>
#include <vector>

namespace pqvk::tokenize {

struct PairMerge {
  double priority;  // lower merges first
  int32_t merged;   // the id of the merged token
};

template <class Lookup>
void merge_pairs(const std::vector<int32_t>& ids, Lookup&& lookup, std::vector<int32_t>& out) {
  struct Symbol {
    int32_t id, prev, next;  // -1: none
    bool alive;
  };
  const auto n = static_cast<int32_t>(ids.size());
  if (n == 0) return;
  std::vector<Symbol> sym(ids.size());
  for (int32_t i = 0; i < n; ++i) sym[static_cast<size_t>(i)] = {ids[static_cast<size_t>(i)], i - 1, i + 1 < n ? i + 1 : -1, true};

  // Candidates: a symbol keeps its index when it absorbs its right neighbour, so indices stay
  // in text order and "leftmost" is the lowest index.
  struct Cand {
    double priority;
    int32_t left, left_id, right_id, merged;
  };
  auto worse = [](const Cand& a, const Cand& b) { return a.priority != b.priority ? a.priority > b.priority : a.left > b.left; };
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
  auto consider = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = sym[static_cast<size_t>(left)].next;
    if (right < 0) return;
    const int32_t a = sym[static_cast<size_t>(left)].id, b = sym[static_cast<size_t>(right)].id;
    if (std::optional<PairMerge> m = lookup(a, b)) heap.push({m->priority, left, a, b, m->merged});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Symbol& l = sym[static_cast<size_t>(c.left)];
    if (!l.alive || l.id != c.left_id || l.next < 0) continue;
    Symbol& r = sym[static_cast<size_t>(l.next)];
    if (r.id != c.right_id) continue;  // stale
    l.id = c.merged;
    r.alive = false;
    l.next = r.next;
    if (r.next >= 0) sym[static_cast<size_t>(r.next)].prev = c.left;
    consider(l.prev);
    consider(c.left);
  }
  for (int32_t i = 0; i >= 0; i = sym[static_cast<size_t>(i)].next) out.push_back(sym[static_cast<size_t>(i)].id);
}

}  // namespace pqvk::tokenize
