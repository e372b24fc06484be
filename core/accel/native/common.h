/* What the attention kernels in this folder share: the softmax's exp2 and bf16 pairing, and running work items on
 * PyTorch's OpenMP team (or on POSIX threads when there is none).
 *
 * The caller passes GOMP_parallel from the OpenMP runtime its process already runs (libgomp or Intel's libiomp5,
 * which exports the same entry): the kernel then runs on the threads PyTorch's own operators use, instead of
 * competing with that team's idle spinning for the same cores.
 */
#ifndef ICLIGHT_COMMON_H
#define ICLIGHT_COMMON_H

#include <immintrin.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define TEAM_MAX_THREADS 256

/* 2^t = 2^floor(t) * 2^f with f in [0, 1): a degree-3 least-squares fit, relative error < 1.4e-4, well inside what
 * the bf16 probabilities keep (3.9e-3); a degree-4 fit measured ~10% slower on the whole AMX kernel. */
static inline __m512 exp2_fast(__m512 t) {
  const __m512 f = _mm512_reduce_ps(t, 0x09); /* t - floor(t), no precision exception */
  __m512 p = _mm512_set1_ps(7.78231349e-02f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.25868407e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.96172114e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.99863694e-01f));
  return _mm512_scalef_ps(p, t); /* scalef uses floor(t); underflows cleanly to 0 */
}

/* Two rows of probabilities (keys 2p, 2p+1) as one row of VNNI pairs: each 32-bit lane holds (bf16(e0), bf16(e1))
 * for one query. Rounds half up, which for these non-negative finite values is round-to-nearest. */
static inline __m512i vnni_pair(__m512 e0, __m512 e1) {
  const __m512i half = _mm512_set1_epi32(0x8000);
  const __m512i lo = _mm512_srli_epi32(_mm512_add_epi32(_mm512_castps_si512(e0), half), 16);
  const __m512i hi = _mm512_add_epi32(_mm512_castps_si512(e1), half);
  return _mm512_ternarylogic_epi32(hi, lo, _mm512_set1_epi32((int)0xFFFF0000u), 0xEC); /* (hi & mask) | lo */
}

/* GOMP_parallel as exported by libgomp and libiomp5: runs fn(data) on a team of num_threads. */
typedef void (*gomp_parallel_t)(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);

typedef struct {
  void *(*fn)(void *);
  char *items;
  size_t size;
  int64_t n, next;
} team_t;

/* Take items off the shared counter until none are left. */
static inline void team_take_items(team_t *t) {
  for (;;) {
    const int64_t i = __atomic_fetch_add(&t->next, 1, __ATOMIC_RELAXED);
    if (i >= t->n) break;
    t->fn(t->items + i * t->size);
  }
}

static inline void team_member_plain(void *arg) { team_take_items((team_t *)arg); }

/* Run fn on each of n items (an array of `size`-byte structs), one per thread: on the OpenMP team through `gomp`
 * with `member` as each thread's entry (it must call team_take_items), else on fresh POSIX threads.
 * 0 on success, 2 when threads could not be had. */
static inline int team_run(gomp_parallel_t gomp, void (*member)(void *), void *(*fn)(void *), void *items, size_t size,
                    int64_t n) {
  if (gomp) {
    team_t t = {fn, (char *)items, size, n, 0};
    gomp(member, &t, (unsigned)n, 0);
    return 0;
  }
  pthread_t th[TEAM_MAX_THREADS];
  int64_t started = 0;
  for (; started < n; ++started)
    if (pthread_create(&th[started], NULL, fn, (char *)items + started * size)) break;
  for (int64_t i = 0; i < started; ++i) pthread_join(th[i], NULL);
  return started < n ? 2 : 0;
}

#endif
