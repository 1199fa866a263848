// The CPU reference of token rounding, written the way the definition reads:
// per expert, drop the lowest-ranked picks or add the best-ranked non-picks,
// then list the chosen pairs by token. Host scratch is O(T*K + C + T): this
// is the oracle, not a fast path.
#include "cpu/token_rounding.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include <sonicmoe/bfloat16.hpp>

#include "common/token_rounding.hpp"
#include "cpu/parallel.hpp"

namespace sonicmoe::cpu {
namespace {

struct Choice {
  int32_t token;
  float score;
};

// Higher key first, then the lower token: a total order, since an expert
// sees each token at most once.
bool better(const Choice& a, const Choice& b) {
  const uint32_t ka = detail::score_key(a.score), kb = detail::score_key(b.score);
  return ka > kb || (ka == kb && a.token < b.token);
}

// Raw softmax over all E, per row: max and 1 / sum of exp(z - max). The sum
// runs in double and is rounded once, and probabilities multiply by the
// inverse, as on the GPU, so that both see the same probabilities up to
// expf's own rounding.
struct RowStats {
  std::vector<float> max, inv_sum;
};

template <class L>
RowStats row_stats(const L* z, int64_t T, int64_t E) {
  RowStats r{std::vector<float>(T), std::vector<float>(T)};
  parallel_for(T, E, [&](int64_t t) {
    const L* row = z + t * E;
    float m = -INFINITY;
    for (int64_t e = 0; e < E; ++e) m = std::fmax(m, to_float(row[e]));
    double s = 0;
    for (int64_t e = 0; e < E; ++e) s += std::exp(to_float(row[e]) - m);
    r.max[t] = m;
    r.inv_sum[t] = 1.0f / static_cast<float>(s);
  });
  return r;
}

template <class L>
void round_typed(const RoundRoutingArgs& a) {
  const int64_t T = a.logits.shape[0], E = a.logits.shape[1], K = a.topk_ids.shape[1];
  const int64_t C = a.token_ids.shape[0];
  const auto* z = static_cast<const L*>(a.logits.data);
  const auto* ids = static_cast<const int32_t*>(a.topk_ids.data);
  const auto* topk_scores = static_cast<const float*>(a.topk_scores.data);

  // Picks per expert, tokens ascending; a repeated id keeps its first slot.
  std::vector<std::vector<Choice>> picks(E);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) {
      const int32_t e = ids[t * K + k];
      if (std::find(ids + t * K, ids + t * K + k, e) != ids + t * K + k) continue;
      picks[e].push_back({static_cast<int32_t>(t), topk_scores[t * K + k]});
    }

  const RowStats stats = row_stats(z, T, E);
  std::vector<std::vector<Choice>> chosen(E);
  parallel_for(E, T * 4, [&](int64_t e) {
    const auto& mine = picks[e];
    const auto count = static_cast<int64_t>(mine.size());
    const int64_t target = detail::rounded_count(count, a.tile, a.mode, T);
    std::vector<Choice>& out = chosen[e];
    if (target <= count) {  // drop the lowest-ranked picks
      out = mine;
      std::sort(out.begin(), out.end(), better);
      out.resize(target);
      return;
    }
    // Add the best non-picks, scored by their raw probability.
    std::vector<Choice> others;
    others.reserve(T - count);
    size_t next_pick = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (next_pick < mine.size() && mine[next_pick].token == t) {
        ++next_pick;
        continue;
      }
      const float p = std::exp(to_float(z[t * E + e]) - stats.max[t]) * stats.inv_sum[t];
      others.push_back({static_cast<int32_t>(t), p});
    }
    const int64_t need = target - count;
    std::partial_sort(others.begin(), others.begin() + need, others.end(), better);
    out = mine;
    out.insert(out.end(), others.begin(), others.begin() + need);
  });

  // List by token, experts ascending within a token: a counting sort by token
  // visiting experts in order.
  std::vector<int64_t> cursor(T + 1, 0);
  for (int64_t e = 0; e < E; ++e)
    for (const Choice& c : chosen[e]) ++cursor[c.token + 1];
  for (int64_t t = 0; t < T; ++t) cursor[t + 1] += cursor[t];
  const int64_t total = cursor[T];
  auto* tok = static_cast<int32_t*>(a.token_ids.data);
  auto* exp = static_cast<int32_t*>(a.expert_ids.data);
  auto* sc = static_cast<float*>(a.scores.data);
  for (int64_t e = 0; e < E; ++e)
    for (const Choice& c : chosen[e]) {
      const int64_t i = cursor[c.token]++;
      tok[i] = c.token;
      exp[i] = static_cast<int32_t>(e);
      sc[i] = c.score;
    }
  for (int64_t i = total; i < C; ++i) {
    tok[i] = static_cast<int32_t>(T - 1);
    exp[i] = kNoExpert;
    sc[i] = 0.0f;
  }
  *static_cast<int32_t*>(a.num_pairs.data) = static_cast<int32_t>(total);
}

}  // namespace

void round_routing(const RoundRoutingArgs& a) {
  if (a.logits.dtype == DType::BF16) round_typed<bf16>(a);
  else round_typed<float>(a);
}

}  // namespace sonicmoe::cpu
