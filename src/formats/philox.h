/* Philox-4x32 counter-based random numbers (Salmon, Moraes, Dror, Shaw,
 * "Parallel Random Numbers: As Easy as 1, 2, 3", SC11; Random123), with a
 * selectable number of rounds, and the (seed, offset) form the serving
 * kernels use for stochastic rounding: FlashInfer's philox_randint4x
 * (include/flashinfer/mamba/conversion.cuh) and Triton's tl.randint4x
 * (triton/language/random.py), which are the same function:
 *   key = (seed low 32 bits, seed high 32 bits),
 *   counter = (offset low 32 bits, offset high 32 bits, 0, 0).
 * Pure functions, no state: any thread may call them in any order. */
#ifndef NQ_FORMATS_PHILOX_H
#define NQ_FORMATS_PHILOX_H

#include <stdint.h>

/* out = Philox4x32-R(ctr, key).  rounds >= 1 (Random123's standard is 10;
 * 7 is its shortest "crush-resistant" variant). */
void nq_philox4x32(const uint32_t ctr[4], const uint32_t key[2], int rounds, uint32_t out[4]);

/* The four words of tl.randint4x(seed, offset, rounds) for a 64-bit offset. */
void nq_philox_randint4x(uint64_t seed, uint64_t offset, int rounds, uint32_t out[4]);

#endif
