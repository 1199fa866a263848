#include "check.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <sstream>

#include <sonicmoe/bfloat16.hpp>

#include "check_util.hpp"
#include "naive.hpp"
#include "report.hpp"

namespace sonicmoe::bench {

void check_router(const Problem& p, const std::vector<int32_t>& tokens,
                  const std::vector<float>& logits, const std::vector<int32_t>& ids,
                  const std::vector<float>& scores, const std::string& note,
                  std::vector<TensorError>& errors) {
  const int64_t E = p.E, K = p.K;
  int64_t mismatched = 0;
  Stats st;
  for (size_t r = 0; r < tokens.size(); ++r) {
    const std::vector<double> row(logits.begin() + r * E, logits.begin() + (r + 1) * E);
    const testing::NaiveRoute ref = testing::naive_router(row, K, p.order, false);
    const int64_t t = tokens[r];
    for (int64_t k = 0; k < K; ++k) mismatched += ids[t * K + k] != ref.ids[k];
    st.add(std::vector<float>(scores.begin() + t * K, scores.begin() + (t + 1) * K), ref.scores);
  }
  errors.push_back(TensorError{"expert_ids", double(mismatched), 0, mismatched ? INFINITY : 0.0,
                               note + (mismatched ? ", " + std::to_string(mismatched) +
                                                        " ids differ from naive_router"
                                                  : ", exact")});
  errors.push_back(st.error("scores", note));
}

namespace {

// dlogits of `tokens` from the reference dscores (rows [S, K]) and the
// library's ids, against the library's dlogits rows.
TensorError check_dlogits(const Problem& p, const std::vector<int32_t>& tokens,
                          const std::vector<float>& logits, const std::vector<int32_t>& ids,
                          const std::vector<double>& ref_dscores, const std::vector<float>& lib,
                          const std::string& note) {
  const int64_t E = p.E, K = p.K;
  std::vector<double> ref;
  ref.reserve(tokens.size() * E);
  for (size_t r = 0; r < tokens.size(); ++r) {
    const std::vector<double> z(logits.begin() + r * E, logits.begin() + (r + 1) * E);
    const std::vector<int32_t> id(ids.begin() + tokens[r] * K, ids.begin() + (tokens[r] + 1) * K);
    const std::vector<double> ds(ref_dscores.begin() + r * K, ref_dscores.begin() + (r + 1) * K);
    append(ref, testing::naive_router_backward(z, id, ds, p.order, false));
  }
  Stats st;
  st.add(lib, ref);
  return st.error("dlogits", note);
}

}  // namespace

// ------------------------------------------------------------ host access --

std::vector<float> host_rows(const DevTensor& t, const std::vector<int32_t>& rows) {
  if (!t.t.present()) return {};
  const int64_t cols = t.t.numel() / t.t.shape[0];
  std::vector<float> out(rows.size() * cols);
  for (size_t r = 0; r < rows.size(); ++r) {
    float* dst = &out[r * cols];
    if (t.t.dtype == DType::BF16) {
      const bf16* src = static_cast<const bf16*>(t.t.data) + rows[r] * cols;
      for (int64_t c = 0; c < cols; ++c) dst[c] = float(src[c]);
    } else {
      const float* src = static_cast<const float*>(t.t.data) + rows[r] * cols;
      std::copy(src, src + cols, dst);
    }
  }
  return out;
}

std::vector<float> HostLayerAccess::x_rows(const std::vector<int32_t>& r) { return host_rows(L_.x, r); }
std::vector<float> HostLayerAccess::dout_rows(const std::vector<int32_t>& r) { return host_rows(L_.dout, r); }
std::vector<float> HostLayerAccess::logits_rows(const std::vector<int32_t>& r) { return host_rows(L_.logits, r); }
std::vector<float> HostLayerAccess::out_rows(const std::vector<int32_t>& r) { return host_rows(L_.out, r); }
std::vector<float> HostLayerAccess::dx_rows(const std::vector<int32_t>& r) { return host_rows(L_.dx, r); }
std::vector<float> HostLayerAccess::dscores_rows(const std::vector<int32_t>& r) { return host_rows(L_.dscores, r); }
std::vector<float> HostLayerAccess::dlogits_rows(const std::vector<int32_t>& r) { return host_rows(L_.dlogits, r); }

testing::ExpertTensors HostLayerAccess::expert_params(int32_t e) {
  return {host_rows(L_.w1, {e}), host_rows(L_.b1, {e}), host_rows(L_.w2, {e}), host_rows(L_.b2, {e})};
}

testing::ExpertTensors HostLayerAccess::expert_grads(int32_t e) {
  return {host_rows(L_.dw1, {e}), host_rows(L_.db1, {e}), host_rows(L_.dw2, {e}),
          host_rows(L_.db2, {e})};
}

std::vector<int32_t> HostLayerAccess::expert_ids() {
  const auto* p = static_cast<const int32_t*>(L_.expert_ids.t.data);
  return {p, p + L_.expert_ids.t.numel()};
}

RoundedPairs collect_pairs(const std::vector<int32_t>& token, const std::vector<int32_t>& expert,
                           const std::vector<float>& score, int64_t count) {
  RoundedPairs r;
  const int64_t n = std::clamp<int64_t>(count, 0, static_cast<int64_t>(expert.size()));
  for (int64_t i = 0; i < n; ++i) {
    if (expert[i] == kNoExpert) continue;
    r.token.push_back(token[i]);
    r.expert.push_back(expert[i]);
    r.score.push_back(score[i]);
    r.index.push_back(static_cast<int32_t>(i));
  }
  return r;
}

RoundedPairs HostLayerAccess::rounded_pairs() {
  const int64_t C = L_.round_expert.t.numel();
  const auto* tok = static_cast<const int32_t*>(L_.round_token.t.data);
  const auto* exp = static_cast<const int32_t*>(L_.round_expert.t.data);
  const auto* sc = static_cast<const float*>(L_.round_score.t.data);
  return collect_pairs({tok, tok + C}, {exp, exp + C}, {sc, sc + C},
                       *static_cast<const int32_t*>(L_.num_pairs.t.data));
}

std::vector<float> HostLayerAccess::scores() {
  const auto* p = static_cast<const float*>(L_.scores.t.data);
  return {p, p + L_.scores.t.numel()};
}

// ------------------------------------------------------------------ full --

std::vector<TensorError> check_full(const Problem& p, LayerAccess& access) {
  const int64_t T = p.T, d = p.H, E = p.E, K = p.K, N = p.pairs();
  std::vector<int32_t> all(T);
  std::iota(all.begin(), all.end(), 0);
  std::vector<TensorError> errors;

  const std::vector<int32_t> ids = access.expert_ids();
  const std::vector<float> scores = access.scores(), logits = access.logits_rows(all);
  if (!ids_in_range(ids, E, errors)) return errors;
  check_router(p, all, logits, ids, scores, "all tokens", errors);

  testing::NaiveLayer L;
  L.T = T;
  L.d = d;
  L.n = p.I;
  L.E = E;
  L.act = p.act;
  L.x = to_double(access.x_rows(all));
  for (int32_t e = 0; e < E; ++e) {
    const testing::ExpertTensors w = access.expert_params(e);
    append(L.w1, to_double(w.w1));
    append(L.b1, to_double(w.b1));
    append(L.w2, to_double(w.w2));
    append(L.b2, to_double(w.b2));
  }
  for (int64_t i = 0; i < N; ++i) {
    L.pair_token.push_back(static_cast<int32_t>(i / K));
    L.pair_expert.push_back(ids[i]);
    L.pair_score.push_back(scores[i]);
  }
  const std::vector<double> dout = to_double(access.dout_rows(all));
  const testing::NaiveForward fwd = testing::naive_forward(L);
  const testing::NaiveGrads g = testing::naive_backward(L, dout);

  const std::string note = "whole tensor";
  auto whole = [&](const char* name, const std::vector<float>& lib, const std::vector<double>& ref) {
    Stats st;
    st.add(lib, ref);
    errors.push_back(st.error(name, note));
  };
  whole("out", access.out_rows(all), fwd.out);
  whole("dx", access.dx_rows(all), g.dx);
  whole("dscores", access.dscores_rows(all), g.dscores);
  check_all_expert_grads(access, E, g, p.bias, note, errors);
  errors.push_back(check_dlogits(p, all, logits, ids, g.dscores, access.dlogits_rows(all), note));
  return errors;
}

// --------------------------------------------------------------- sampled --

std::vector<TensorError> check_sampled(const Problem& p, LayerAccess& access) {
  const int64_t K = p.K, N = p.pairs();
  std::vector<TensorError> errors;
  const std::vector<int32_t> ids = access.expert_ids();
  const std::vector<float> scores = access.scores();
  if (!ids_in_range(ids, p.E, errors)) return errors;

  testing::SampledLayer L;
  L.T = p.T;
  L.d = p.H;
  L.n = p.I;
  L.E = p.E;
  L.act = p.act;
  L.has_b1 = L.has_b2 = p.bias;
  L.pair_expert = ids;
  L.pair_score.assign(scores.begin(), scores.end());
  L.pair_token.resize(N);
  for (int64_t i = 0; i < N; ++i) L.pair_token[i] = static_cast<int32_t>(i / K);

  const testing::Sample S = testing::choose_sample(L, kSampleTokens, p.seed);
  const std::string token_note = std::to_string(S.tokens.size()) + " sampled tokens";
  std::ostringstream expert_note;
  expert_note << "experts";
  for (int32_t e : S.experts)
    expert_note << ' ' << e << " (" << std::count(ids.begin(), ids.end(), e) << " pairs)";

  const std::vector<float> logits = access.logits_rows(S.tokens);
  check_router(p, S.tokens, logits, ids, scores, token_note, errors);

  const testing::SampledReference ref = testing::sampled_reference(L, S, access);
  auto rows = [&](const char* name, const std::vector<float>& lib, const std::vector<double>& r) {
    Stats st;
    st.add(lib, r);
    errors.push_back(st.error(name, token_note));
  };
  rows("out", access.out_rows(S.tokens), ref.out);
  rows("dx", access.dx_rows(S.tokens), ref.dx);
  // The sampled tokens' pairs are t*K + k in token order: the [S, K] rows.
  rows("dscores", access.dscores_rows(S.tokens), ref.dscores);

  check_expert_grads(access, S.experts, ref, p.bias, expert_note.str(), errors);
  errors.push_back(
      check_dlogits(p, S.tokens, logits, ids, ref.dscores, access.dlogits_rows(S.tokens), token_note));
  return errors;
}

std::vector<TensorError> run_check(const Problem& p, LayerAccess& access, double tol,
                                   const std::string& tag) {
  {
    // Loads say how uneven the random router is, and which experts the
    // sampled check's gradient slices come from.
    std::vector<int64_t> load(p.E, 0);
    for (int32_t e : p.rounded() ? access.rounded_pairs().expert : access.expert_ids())
      if (e >= 0 && e < p.E) ++load[e];
    std::sort(load.begin(), load.end());
    progress(tag, "check (" + std::string(p.check == CheckMode::Full ? "full" : "sampled") +
                      "): expert loads min/median/max " + std::to_string(load.front()) + "/" +
                      std::to_string(load[p.E / 2]) + "/" + std::to_string(load.back()) +
                      " pairs (mean " + std::to_string(p.pairs() / p.E) + " before rounding)");
  }
  const auto start = std::chrono::steady_clock::now();
  std::vector<TensorError> errors = p.rounded()                  ? check_rounded(p, access)
                                   : p.check == CheckMode::Full ? check_full(p, access)
                                                                : check_sampled(p, access);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  char buf[64];
  std::snprintf(buf, sizeof buf, "fp64 oracle done in %.1f s, tolerance %.1e", secs, tol);
  progress(tag, buf);
  for (const auto& e : errors)
    std::fprintf(stderr, "    %-10s max|err| %9.3e  max|ref| %9.3e  rel %9.3e  %-4s  (%s)\n",
                 e.name.c_str(), e.max_abs, e.ref_max, e.rel, e.rel <= tol ? "ok" : "FAIL",
                 e.note.c_str());
  return errors;
}

}  // namespace sonicmoe::bench
