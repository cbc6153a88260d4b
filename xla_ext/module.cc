// Copyright 2026 The lookupffn-jax Authors.
// SPDX-License-Identifier: Apache-2.0
//
// The nanobind module lookupffn_jax._lookup_ext: hands the FFI handlers to
// Python for jax.ffi.register_ffi_target, and exposes the kernel settings
// that tests and benchmarks change.

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "bh4.h"
#include "lookup.h"
#include "parallel.h"
#include "simd.h"

namespace nb = nanobind;

namespace {

template <typename T>
nb::capsule Capsule(T* fn) {
  static_assert(std::is_invocable_r_v<XLA_FFI_Error*, T, XLA_FFI_CallFrame*>,
                "an XLA FFI handler must be callable with a call frame");
  return nb::capsule(reinterpret_cast<void*>(fn));
}

}  // namespace

NB_MODULE(_lookup_ext, m) {
  m.doc() = "XLA FFI CPU kernels of lookupffn_jax.";

  m.def(
      "registrations",
      []() {
        nb::dict targets;
        targets["lookupffn_weighted_gather_fwd"] =
            Capsule(lookupffn::WeightedGatherFwdHandler);
        targets["lookupffn_weighted_gather_bias_fwd"] =
            Capsule(lookupffn::WeightedGatherBiasFwdHandler);
        targets["lookupffn_weighted_gather_bwd"] =
            Capsule(lookupffn::WeightedGatherBwdHandler);
        targets["lookupffn_lookup_fwd"] = Capsule(lookupffn::LookupFwdHandler);
        targets["lookupffn_lookup_bwd"] = Capsule(lookupffn::LookupBwdHandler);
        targets["lookupffn_bh4_fwd"] = Capsule(lookupffn::Bh4FwdHandler);
        targets["lookupffn_bh4_mix_fwd"] = Capsule(lookupffn::Bh4MixFwdHandler);
        targets["lookupffn_bh4_hash"] = Capsule(lookupffn::Bh4HashHandler);
        targets["lookupffn_norm_bh4_hash"] =
            Capsule(lookupffn::NormBh4HashHandler);
        targets["lookupffn_bh4_bwd"] = Capsule(lookupffn::Bh4BwdHandler);
        return targets;
      },
      "Returns {target name: handler capsule} for jax.ffi.register_ffi_target.");

  m.def(
      "set_max_threads",
      [](int64_t max_threads) {
        if (max_threads < 0) {
          throw std::invalid_argument(
              "max_threads must be >= 0 (0 uses every thread of XLA's pool), "
              "got " + std::to_string(max_threads));
        }
        lookupffn::MaxThreads().store(max_threads);
      },
      nb::arg("max_threads"),
      "Caps the threads each kernel call uses; 0 removes the cap.");
  m.def("max_threads", []() { return lookupffn::MaxThreads().load(); },
        "Returns the thread cap set by set_max_threads (0: none).");

  m.def(
      "set_max_isa",
      [](const std::string& isa) {
        if (isa == "scalar") {
          lookupffn::simd::SetMaxIsa(lookupffn::simd::Isa::kScalar);
        } else if (isa == "avx2") {
          lookupffn::simd::SetMaxIsa(lookupffn::simd::Isa::kAvx2);
        } else if (isa == "avx512") {
          lookupffn::simd::SetMaxIsa(lookupffn::simd::Isa::kAvx512);
        } else {
          throw std::invalid_argument(
              "isa must be 'avx512', 'avx2' or 'scalar', got '" + isa + "'");
        }
      },
      nb::arg("isa"),
      "Caps the instruction set of the kernels at 'avx512' (the default: the "
      "best this CPU supports), 'avx2' or 'scalar'.");
  m.def("force_scalar", &lookupffn::simd::ForceScalar, nb::arg("force"),
        "Makes the kernels use scalar code (True) or the best SIMD code the "
        "CPU supports (False).");
  m.def("active_isa", &lookupffn::simd::ActiveIsa,
        "Returns the instruction set the kernels use now: 'avx512', 'avx2' or "
        "'scalar'.");
  m.def("avx2_supported", &lookupffn::simd::Avx2Supported,
        "Returns whether this CPU supports the AVX2/FMA kernels.");
  m.def("avx512_supported", &lookupffn::simd::Avx512Supported,
        "Returns whether this CPU supports the AVX-512 kernels.");
}
