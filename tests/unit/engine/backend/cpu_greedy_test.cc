// The CPU backend's greedy choice per row against std::max_element, the definition it keeps:
// the first index of the largest value, a NaN never winning (a row that starts with NaN
// gives 0), on rows of every length around the vector width and the real vocabulary's,
// with ties, infinities, signed zeros and NaNs where they can fool a lane-wise search.
#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "inferbox/engine/backend/backend.h"

namespace inferbox::engine {
namespace {

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

int32_t Reference(const std::vector<float>& row) {
  return static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
}

int32_t CpuGreedy(Backend& backend, const std::vector<float>& row) {
  std::vector<int32_t> token(1, -1);
  backend.GreedyRows(row, 1, static_cast<int64_t>(row.size()), token, {});
  return token[0];
}

TEST(CpuGreedyRows, IsTheFirstLargestValueOfEveryRow) {
  auto backend = MakeCpuBackend();
  std::mt19937 rng(5);
  // Few distinct values, so that ties are common; specials sprinkled in.
  std::uniform_int_distribution<int> level(-3, 3);
  std::uniform_int_distribution<int> special(0, 40);
  int checked = 0;
  for (const size_t length :
       {1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 35, 63, 64, 65, 100, 1000, 4099, 151669}) {
    for (int trial = 0; trial < (length > 5000 ? 4 : 300); ++trial) {
      std::vector<float> row(length);
      for (float& value : row) {
        value = static_cast<float>(level(rng)) * 0.5f;
        switch (special(rng)) {
          case 0: value = kNan; break;
          case 1: value = kInf; break;
          case 2: value = -kInf; break;
          case 3: value = -0.0f; break;
          default: break;
        }
      }
      if (trial % 7 == 0) row[0] = kNan;  // A row that starts with NaN: 0, as std::max_element.
      if (trial % 11 == 0) std::fill(row.begin(), row.end(), 1.5f);  // All tied: 0.
      if (trial % 13 == 0) row.back() = 100.0f;                      // The largest last.
      ASSERT_EQ(CpuGreedy(*backend, row), Reference(row))
          << "length " << length << ", trial " << trial;
      ++checked;
    }
  }
  EXPECT_GT(checked, 5000);
}

TEST(CpuGreedyRows, RowsAreIndependentAndLogprobsComeFromTheChosenValue) {
  auto backend = MakeCpuBackend();
  const int64_t cols = 1000;
  std::vector<float> logits(3 * cols, 0.0f);
  logits[0 * cols + 999] = 2.0f;  // The last column.
  logits[1 * cols + 4] = 2.0f;    // A tie: the first of the two wins.
  logits[1 * cols + 900] = 2.0f;
  logits[2 * cols + 0] = kNan;  // Starts with NaN.
  logits[2 * cols + 10] = 5.0f;
  std::vector<int32_t> tokens(3, -1);
  std::vector<float> logprobs(3, 0.0f);
  backend->GreedyRows(logits, 3, cols, tokens, logprobs);
  EXPECT_EQ(tokens, (std::vector<int32_t>{999, 4, 0}));
  // log softmax at the chosen value: -log(e^0 + 999 e^-2).
  EXPECT_NEAR(logprobs[0], -std::log(1.0 + 999.0 * std::exp(-2.0)), 1e-5);
  EXPECT_NEAR(logprobs[1], -std::log(2.0 + 998.0 * std::exp(-2.0)), 1e-5);
}

}  // namespace
}  // namespace inferbox::engine
