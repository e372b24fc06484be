/* Fused bf16 normalisation kernels for the CPU UNet (AVX512-BF16: Intel Cooper Lake, Sapphire
 * Rapids and newer, AMD Zen 4 and newer).
 *
 * Built on first use by core/cpu_ops.py and called through ctypes. Each replaces PyTorch operators that make
 * separate passes over memory and round to bf16 between them, and that PyTorch runs at a fraction of the memory
 * bandwidth in bf16 (its SiLU on a 6.6 MB activation takes 2.4x as long as a copy):
 *   group_norm:  GroupNorm on channels-last activations, optionally followed by SiLU in the same pass;
 *   layer_norm:  LayerNorm over the last dimension.
 * Arithmetic is fp32 (statistics accumulated in double across pixels), rounded to bf16 once, at the output.
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define LANES 16
#define STAT_CHUNK 64 /* pixels summed in fp32 before the sums move to double: bounds fp32 rounding error */
#define LOG2E 1.4426950408889634f

static inline __mmask16 tail_mask(int64_t n) { return n >= LANES ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }

static inline __m512 load_bf16(const uint16_t *p, __mmask16 m) {
  const __m256i raw = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

static inline void store_bf16(uint16_t *p, __m512 x, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(x)); /* round to nearest even */
}

/* e^x for x <= 0, relative error below 1.4e-4 (exp2_fast); underflows to 0. */
static inline __m512 exp_neg(__m512 x) { return exp2_fast(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E))); }

/* x * sigmoid(x) = x / (1 + e^-x); e^-|x| keeps the exponential finite, then sigmoid(-y) = 1 - sigmoid(y). */
static inline __m512 silu(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 e = exp_neg(_mm512_sub_ps(_mm512_setzero_ps(), ax));
  const __m512 s = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e)); /* sigmoid(|x|) */
  const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mul_ps(x, _mm512_mask_sub_ps(s, neg, _mm512_set1_ps(1.0f), s));
}

/* ---------------------------------------------------------------- GroupNorm (+ SiLU), channels last */

typedef struct {
  const uint16_t *x;          /* [B][HW][C] */
  uint16_t *out;              /* [B][HW][C] */
  double *sums;               /* this job's [B][2][C]: sums of (x - k) and (x - k)^2 per channel */
  const float *scale, *shift; /* [B][C]: y = x * scale + shift */
  int64_t HW, C, r0, r1;      /* flat pixel rows [r0, r1) of B * HW */
  int silu, failed;
} gn_job_t;

/* Per-channel sums of deviations from k = the item's first pixel (variance is shift-invariant, and deviations keep
 * the fp32 partial sums and the final E[d^2] - E[d]^2 free of cancellation when the mean is large). */
static void *gn_stats_worker(void *arg) {
  gn_job_t *j = (gn_job_t *)arg;
  const int64_t C = j->C;
  float *acc = (float *)aligned_alloc(64, ((2 * C * sizeof(float) + 63) / 64) * 64);
  if (!acc) {
    j->failed = 1;
    return NULL;
  }
  for (int64_t r = j->r0; r < j->r1;) {
    const int64_t b = r / j->HW, end_b = (b + 1) * j->HW, stop = j->r1 < end_b ? j->r1 : end_b;
    const uint16_t *first = j->x + b * j->HW * C;
    double *s = j->sums + b * 2 * C;
    while (r < stop) {
      const int64_t n = stop - r < STAT_CHUNK ? stop - r : STAT_CHUNK;
      memset(acc, 0, 2 * C * sizeof(float));
      for (int64_t p = r; p < r + n; ++p) {
        const uint16_t *row = j->x + p * C;
        for (int64_t c = 0; c < C; c += LANES) {
          const __mmask16 m = tail_mask(C - c);
          const __m512 d = _mm512_sub_ps(load_bf16(row + c, m), load_bf16(first + c, m));
          _mm512_mask_storeu_ps(acc + c, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, acc + c), d));
          _mm512_mask_storeu_ps(acc + C + c, m, _mm512_fmadd_ps(d, d, _mm512_maskz_loadu_ps(m, acc + C + c)));
        }
      }
      for (int64_t c = 0; c < 2 * C; ++c) s[c] += acc[c];
      r += n;
    }
  }
  free(acc);
  return NULL;
}

static void *gn_apply_worker(void *arg) {
  const gn_job_t *j = (const gn_job_t *)arg;
  const int64_t C = j->C;
  for (int64_t r = j->r0; r < j->r1; ++r) {
    const int64_t b = r / j->HW;
    const uint16_t *row = j->x + r * C;
    uint16_t *out = j->out + r * C;
    const float *scale = j->scale + b * C, *shift = j->shift + b * C;
    for (int64_t c = 0; c < C; c += LANES) {
      const __mmask16 m = tail_mask(C - c);
      __m512 y = _mm512_fmadd_ps(load_bf16(row + c, m), _mm512_maskz_loadu_ps(m, scale + c),
                                 _mm512_maskz_loadu_ps(m, shift + c));
      if (j->silu) y = silu(y);
      store_bf16(out + c, y, m);
    }
  }
  return NULL;
}

/* bytes of scratch bf16_group_norm needs */
int64_t bf16_group_norm_work_bytes(int64_t B, int64_t C, int64_t nthreads) {
  return 2 * B * C * (int64_t)sizeof(float) + nthreads * 2 * B * C * (int64_t)sizeof(double);
}

/* GroupNorm of x [B][HW][C] (NHWC) in G groups of C / G channels, weight/bias fp32 [C] (either may be NULL),
 * then SiLU when `silu`. `work`: bf16_group_norm_work_bytes of scratch, 8-byte aligned.
 * 0 on success, 1 for bad arguments, 2 when threads or memory could not be had. */
int bf16_group_norm(const uint16_t *x, uint16_t *out, const float *weight, const float *bias, int64_t B, int64_t HW,
                    int64_t C, int64_t G, double eps, int silu, void *work, int64_t nthreads, void *gomp) {
  if (B <= 0 || HW <= 0 || C <= 0 || G <= 0 || C % G || !(eps >= 0) || nthreads < 1 || nthreads > TEAM_MAX_THREADS)
    return 1;
  double *sums = (double *)work;
  float *scale = (float *)(sums + nthreads * 2 * B * C), *shift = scale + B * C;
  memset(sums, 0, nthreads * 2 * B * C * sizeof(double));
  gn_job_t jobs[TEAM_MAX_THREADS];
  const int64_t rows = B * HW;
  for (int64_t i = 0; i < nthreads; ++i)
    jobs[i] = (gn_job_t){x, out, sums + i * 2 * B * C, scale, shift, HW, C, rows * i / nthreads,
                         rows * (i + 1) / nthreads, silu, 0};
  if (team_run((gomp_parallel_t)gomp, team_member_plain, gn_stats_worker, jobs, sizeof jobs[0], nthreads)) return 2;
  for (int64_t i = 0; i < nthreads; ++i)
    if (jobs[i].failed) return 2;
  const int64_t per = C / G;
  const double count = (double)HW * (double)per;
  for (int64_t b = 0; b < B; ++b) {
    const uint16_t *first = x + b * HW * C;
    for (int64_t g = 0; g < G; ++g) {
      double s = 0, ss = 0; /* over the group, in double: sum of x and of x^2, rebuilt from the deviations */
      for (int64_t c = g * per; c < (g + 1) * per; ++c) {
        double sc = 0, ssc = 0;
        for (int64_t i = 0; i < nthreads; ++i) {
          sc += sums[(i * B + b) * 2 * C + c];
          ssc += sums[(i * B + b) * 2 * C + C + c];
        }
        const uint32_t kbits = (uint32_t)first[c] << 16;
        float k;
        memcpy(&k, &kbits, sizeof k);
        s += sc + (double)HW * k;
        ss += ssc + 2.0 * k * sc + (double)HW * k * k;
      }
      const double mean = s / count, var = ss / count - mean * mean;
      const double rstd = 1.0 / sqrt((var > 0 ? var : 0) + eps);
      for (int64_t c = g * per; c < (g + 1) * per; ++c) {
        const double w = weight ? weight[c] : 1.0, bb = bias ? bias[c] : 0.0;
        scale[b * C + c] = (float)(rstd * w);
        shift[b * C + c] = (float)(bb - mean * rstd * w);
      }
    }
  }
  return team_run((gomp_parallel_t)gomp, team_member_plain, gn_apply_worker, jobs, sizeof jobs[0], nthreads);
}

/* ---------------------------------------------------------------- LayerNorm over the last dimension */

typedef struct {
  const uint16_t *x;
  uint16_t *out;
  const float *weight, *bias;
  int64_t C, r0, r1;
  float eps;
} ln_job_t;

static void *ln_worker(void *arg) {
  const ln_job_t *j = (const ln_job_t *)arg;
  const int64_t C = j->C;
  for (int64_t r = j->r0; r < j->r1; ++r) {
    const uint16_t *row = j->x + r * C;
    uint16_t *out = j->out + r * C;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t c = 0; c < C; c += LANES) acc = _mm512_add_ps(acc, load_bf16(row + c, tail_mask(C - c)));
    const float mean = _mm512_reduce_add_ps(acc) / (float)C;
    const __m512 vm = _mm512_set1_ps(mean);
    acc = _mm512_setzero_ps();
    for (int64_t c = 0; c < C; c += LANES) { /* second pass over the row (in L1): deviations, no cancellation */
      const __mmask16 m = tail_mask(C - c);
      const __m512 d = _mm512_maskz_sub_ps(m, load_bf16(row + c, m), vm);
      acc = _mm512_fmadd_ps(d, d, acc);
    }
    const __m512 rstd = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(acc) / (float)C + j->eps));
    for (int64_t c = 0; c < C; c += LANES) {
      const __mmask16 m = tail_mask(C - c);
      __m512 y = _mm512_mul_ps(_mm512_sub_ps(load_bf16(row + c, m), vm), rstd);
      if (j->weight) y = _mm512_mul_ps(y, _mm512_maskz_loadu_ps(m, j->weight + c));
      if (j->bias) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, j->bias + c));
      store_bf16(out + c, y, m);
    }
  }
  return NULL;
}

/* LayerNorm of each of `rows` rows of C bf16 values, weight/bias fp32 [C] (either may be NULL).
 * 0 on success, 1 for bad arguments, 2 when threads could not be had. */
int bf16_layer_norm(const uint16_t *x, uint16_t *out, const float *weight, const float *bias, int64_t rows, int64_t C,
                    double eps, int64_t nthreads, void *gomp) {
  if (rows < 0 || C <= 0 || !(eps >= 0) || nthreads < 1 || nthreads > TEAM_MAX_THREADS) return 1;
  ln_job_t jobs[TEAM_MAX_THREADS];
  for (int64_t i = 0; i < nthreads; ++i)
    jobs[i] = (ln_job_t){x, out, weight, bias, C, rows * i / nthreads, rows * (i + 1) / nthreads, (float)eps};
  return team_run((gomp_parallel_t)gomp, team_member_plain, ln_worker, jobs, sizeof jobs[0], nthreads);
}
