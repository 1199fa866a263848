// The accuracy check of a token-rounded run (check.hpp, check_rounded): the
// oracles of testing/ run on the general routing the library produced,
// read back from where round_routing wrote it (padding dropped). Whether the
// rounding itself is right is tests/test_token_rounding.cpp's job; here the
// layer must compute exactly the pairs it was given.
#include <numeric>
#include <sstream>

#include "check_util.hpp"
#include "naive.hpp"

namespace sonicmoe::bench {

namespace {

// Tokens outside [0, T) would make the oracles index out of bounds.
bool tokens_in_range(const std::vector<int32_t>& tokens, int64_t T,
                     std::vector<TensorError>& errors) {
  const auto bad =
      std::count_if(tokens.begin(), tokens.end(), [&](int32_t t) { return t < 0 || t >= T; });
  if (bad == 0) return true;
  errors.push_back(TensorError{"token_ids", INFINITY, double(T - 1), INFINITY,
                               std::to_string(bad) + " tokens outside [0, T): rest of check skipped"});
  return false;
}

std::vector<TensorError> check_full_rounded(const Problem& p, LayerAccess& access,
                                            const RoundedPairs& pairs) {
  const int64_t T = p.T, E = p.E, C = p.capacity();
  std::vector<int32_t> all(T);
  std::iota(all.begin(), all.end(), 0);
  std::vector<TensorError> errors;
  check_router(p, all, access.logits_rows(all), access.expert_ids(), access.scores(),
               "all tokens (top-K before rounding)", errors);

  testing::NaiveLayer L;
  L.T = T, L.d = p.H, L.n = p.I, L.E = E, L.act = p.act;
  L.x = to_double(access.x_rows(all));
  for (int32_t e = 0; e < E; ++e) {
    const testing::ExpertTensors w = access.expert_params(e);
    append(L.w1, to_double(w.w1));
    append(L.b1, to_double(w.b1));
    append(L.w2, to_double(w.w2));
    append(L.b2, to_double(w.b2));
  }
  L.pair_token = pairs.token;
  L.pair_expert = pairs.expert;
  L.pair_score = pairs.score;
  const testing::NaiveForward fwd = testing::naive_forward(L);
  const testing::NaiveGrads g = testing::naive_backward(L, to_double(access.dout_rows(all)));

  const std::string note = std::to_string(pairs.token.size()) + " rounded pairs";
  auto whole = [&](const char* name, const auto& lib, const std::vector<double>& ref) {
    Stats st;
    st.add(lib, ref);
    errors.push_back(st.error(name, note));
  };
  whole("out", access.out_rows(all), fwd.out);
  whole("dx", access.dx_rows(all), g.dx);
  // Every one of the C pairs: the padding tail's dscores must be 0.
  std::vector<int32_t> every(C);
  std::iota(every.begin(), every.end(), 0);
  std::vector<double> ref_ds(C, 0.0);
  for (size_t i = 0; i < pairs.index.size(); ++i) ref_ds[pairs.index[i]] = g.dscores[i];
  whole("dscores", access.dscores_rows(every), ref_ds);
  check_all_expert_grads(access, E, g, p.bias, note, errors);
  return errors;
}

std::vector<TensorError> check_sampled_rounded(const Problem& p, LayerAccess& access,
                                               const RoundedPairs& pairs) {
  std::vector<TensorError> errors;
  testing::SampledLayer L;
  L.T = p.T, L.d = p.H, L.n = p.I, L.E = p.E, L.act = p.act;
  L.has_b1 = L.has_b2 = p.bias;
  L.pair_token = pairs.token;
  L.pair_expert = pairs.expert;
  L.pair_score = pairs.score;

  const testing::Sample S = testing::choose_sample(L, kSampleTokens, p.seed);
  const std::string token_note = std::to_string(S.tokens.size()) + " sampled tokens, rounded pairs";
  std::ostringstream expert_note;
  expert_note << "experts";
  for (int32_t e : S.experts)
    expert_note << ' ' << e << " ("
                << std::count(pairs.expert.begin(), pairs.expert.end(), e) << " rounded pairs)";

  check_router(p, S.tokens, access.logits_rows(S.tokens), access.expert_ids(), access.scores(),
               std::to_string(S.tokens.size()) + " sampled tokens (top-K before rounding)", errors);

  const testing::SampledReference ref = testing::sampled_reference(L, S, access);
  auto rows = [&](const char* name, const std::vector<float>& lib, const std::vector<double>& r) {
    Stats st;
    st.add(lib, r);
    errors.push_back(st.error(name, token_note));
  };
  rows("out", access.out_rows(S.tokens), ref.out);
  rows("dx", access.dx_rows(S.tokens), ref.dx);
  std::vector<int32_t> at;  // the sampled tokens' pairs, as indices into the C pairs
  for (int64_t i : ref.pairs) at.push_back(pairs.index[i]);
  rows("dscores", access.dscores_rows(at), ref.dscores);

  check_expert_grads(access, S.experts, ref, p.bias, expert_note.str(), errors);
  return errors;
}

}  // namespace

std::vector<TensorError> check_rounded(const Problem& p, LayerAccess& access) {
  std::vector<TensorError> errors;
  const RoundedPairs pairs = access.rounded_pairs();
  if (!ids_in_range(pairs.expert, p.E, errors) || !tokens_in_range(pairs.token, p.T, errors))
    return errors;
  return p.check == CheckMode::Full ? check_full_rounded(p, access, pairs)
                                    : check_sampled_rounded(p, access, pairs);
}

}  // namespace sonicmoe::bench
