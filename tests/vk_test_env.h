// Shared Vulkan context for the GPU tests, with the validation layer on and a check after
// every test that no validation message (warning or error) was emitted during it.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "kernels/kernels.h"
#include "vk/context.h"

namespace pqvk::test {

// The context every GPU test shares (created on first use, validation always on).
vk::Context& context();
Kernels& kernels();

// Random data: N(0, 1) with a few large outliers, never all zeros.
std::vector<float> random_vector(size_t n, uint32_t seed, float outlier_frac = 0.01f);

// The bit pattern written into outputs before a kernel runs: a NaN, so an element the kernel
// fails to write fails the comparison.
constexpr uint32_t kPoison = 0x7fc0dead;

// Reads a float buffer back.
std::vector<float> read_floats(const vk::Buffer& b, size_t n);

// ||a - b|| / ||b||, with any NaN or inf in a giving +inf.
double rel_error(const std::vector<float>& a, const std::vector<double>& b);
double rel_error(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace pqvk::test
