// Copyright 2026 The lookupffn-jax Authors.
// SPDX-License-Identifier: Apache-2.0
//
// A parallel loop over a fixed number of work chunks on XLA's FFI thread
// pool. Which thread runs a chunk never changes what the chunk computes, so
// results are bitwise identical for any thread count.

#ifndef LOOKUPFFN_XLA_EXT_PARALLEL_H_
#define LOOKUPFFN_XLA_EXT_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace lookupffn {

// Upper bound on the threads one call uses, 0 meaning all of the pool's.
// Meant for tests and benchmarks; set from Python.
inline std::atomic<int64_t>& MaxThreads() {
  static std::atomic<int64_t> max_threads{0};
  return max_threads;
}

// How long a caller that has run out of chunks polls for the others to
// finish before it sleeps on a condition variable. On the 2-core
// development machine, a virtual machine, a thread woken from such a sleep
// started 20 to 30 us after the wake-up call once its core had gone idle.
// With the caller sleeping, the hash kernel at 8 tokens (two chunks of
// about 35 us) took 100 to 130 us, and with it polling 55 to 65 us. For
// longer waits the wake-up matters less.
inline constexpr std::chrono::microseconds kPollBeforeSleep{200};

// Tells the core that this thread is polling, as in a spin lock.
inline void CpuRelax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Runs fn(chunk) for every chunk in [0, num_chunks) and returns when all
// have finished. The calling thread takes chunks too and waits only for
// chunks that another thread has already claimed, first polling for up to
// kPollBeforeSleep and then sleeping. A busy or single-thread pool
// therefore only delays the loop, because unclaimed chunks run here.
inline void ParallelFor(xla::ffi::ThreadPool& pool, int64_t num_chunks,
                        const std::function<void(int64_t)>& fn) {
  if (num_chunks <= 0) return;
  int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  const int64_t limit = MaxThreads().load(std::memory_order_relaxed);
  if (limit > 0) threads = std::min(threads, limit);
  const int64_t helpers = std::min(threads, num_chunks) - 1;
  if (helpers <= 0) {
    for (int64_t chunk = 0; chunk < num_chunks; ++chunk) fn(chunk);
    return;
  }

  // Shared with pool tasks, which may start after this call has returned;
  // such a task finds no chunk left and never touches fn.
  struct State {
    std::atomic<int64_t> next{0};
    // Chunks finished, written under mu and read without it while polling.
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();

  auto work = [state, num_chunks, &fn]() {
    int64_t finished = 0;
    for (int64_t chunk = state->next.fetch_add(1); chunk < num_chunks;
         chunk = state->next.fetch_add(1)) {
      fn(chunk);
      ++finished;
    }
    if (finished > 0) {
      std::lock_guard<std::mutex> lock(state->mu);
      const int64_t done =
          state->done.fetch_add(finished, std::memory_order_acq_rel) +
          finished;
      if (done == num_chunks) state->cv.notify_all();
    }
  };
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(work)(work));
  work();

  auto all_done = [&] {
    return state->done.load(std::memory_order_acquire) == num_chunks;
  };
  const auto poll_until = std::chrono::steady_clock::now() + kPollBeforeSleep;
  while (!all_done()) {
    for (int i = 0; i < 64; ++i) CpuRelax();
    if (std::chrono::steady_clock::now() >= poll_until) break;
  }
  if (all_done()) return;
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, all_done);
}

}  // namespace lookupffn

#endif  // LOOKUPFFN_XLA_EXT_PARALLEL_H_
