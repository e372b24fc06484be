/* Fused bf16 attention for x86 CPUs with AVX512-BF16 but no AMX (AMD Zen 4 and newer, Intel Cooper Lake).
 *
 * Built on first use by core/cpu_attention.py and called through ctypes. Flash-attention style: keys are
 * processed in blocks with an online softmax, so the N x N score matrix never leaves the L1 cache. Both products
 * run on vdpbf16ps (16 fp32 lanes, each a sum of two bf16 products), one query per SIMD lane, so the softmax needs
 * no horizontal reductions and no head-dim padding is wasted:
 *   S^T row k (16 queries) = sum over dim pairs p of  Q^T pair row p  .  broadcast(K[k] pair p)
 *   O^T row d (16 queries) += sum over key pairs j of  P^T pair row j  .  broadcast((V[2j][d], V[2j+1][d]))
 * Eight keys are scored at once and up to 20 head dims accumulated at once, enough independent accumulators to
 * hide the instruction's latency. Any even head size up to 256 is supported; SD 1.5's 40, 80 and 160 and SD 2's 64
 * get code specialised for them.
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define QT 16    /* queries per tile (one per SIMD lane) */
#define KG 8     /* keys scored at once */
#define MAX_D 256
#define MAX_OR 20 /* most head dims accumulated at once */
#define INLINE static inline __attribute__((always_inline))

typedef struct {
  const uint16_t *q;
  const uint32_t *kp, *vp; /* kp: K rows as dim pairs [BH][ldk][D/2]; vp: key pairs [BH][ldk/2][D], zero padded */
  uint16_t *out;           /* [B][Nq][H][D] */
  int64_t H, Nq, Nk, D, ldk, block;
  int64_t qs0, qs1, qs2;
  float scale2; /* softmax scale times log2(e) */
  int64_t task_begin, task_end;
  int failed;
} job_t;

/* O^T rows [d0, d0 + OR) += V^T P^T over np key pairs, after scaling them by corr (the running max moved). */
INLINE void pv_rows(const int OR, float *ot, int64_t d0, const uint32_t *P, const uint32_t *vr, int64_t np,
                    int64_t D, __m512 corr) {
  __m512 acc[MAX_OR]; /* OR is a constant here, so the loops unroll and acc lives in registers */
#pragma GCC unroll 20
  for (int r = 0; r < OR; ++r) acc[r] = _mm512_mul_ps(_mm512_load_ps(ot + (d0 + r) * QT), corr);
  for (int64_t j = 0; j < np; ++j) {
    const __m512bh pv = (__m512bh)_mm512_load_si512(P + j * QT);
    const uint32_t *v = vr + j * D + d0;
#pragma GCC unroll 20
    for (int r = 0; r < OR; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], pv, (__m512bh)_mm512_set1_epi32((int)v[r]));
  }
#pragma GCC unroll 20
  for (int r = 0; r < OR; ++r) _mm512_store_ps(ot + (d0 + r) * QT, acc[r]);
}

/* Attend one tile of 16 queries (Q^T as dim pairs in qtv) to all keys; leaves unnormalised O^T in ot and the
 * softmax denominators in *lsum. D is a constant where this is inlined for a specialised head size. */
INLINE void attend_tile(const job_t *j, const int64_t D, const uint32_t *qtv, const uint32_t *kh, const uint32_t *vh,
                        float *S, uint32_t *P, float *ot, __m512 *lsum) {
  const int64_t D2 = D / 2, Nk = j->Nk, block = j->block;
  /* head dims accumulated at once: as many as divide D, up to 20 (+ the P row and broadcasts: 23 registers) */
  const int OR = D % 20 == 0 ? 20 : D % 16 == 0 ? 16 : D % 8 == 0 ? 8 : D % 4 == 0 ? 4 : 2;
  const __m512 s2 = _mm512_set1_ps(j->scale2);
  __m512 m = _mm512_set1_ps(-1e30f), l = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; ++d) _mm512_store_ps(ot + d * QT, _mm512_setzero_ps());
  for (int64_t kb = 0; kb < Nk; kb += block) {
    const int64_t nk = (Nk - kb) < block ? (Nk - kb) : block, ng = (nk + KG - 1) / KG, np = (nk + 1) / 2;
    __m512 bmax = _mm512_set1_ps(-INFINITY);
    for (int64_t g = 0; g < ng; ++g) { /* S^T rows for KG keys */
      const uint32_t *kr = kh + (kb + g * KG) * D2;
      __m512 acc[KG];
      for (int i = 0; i < KG; ++i) acc[i] = _mm512_setzero_ps();
      for (int64_t p = 0; p < D2; ++p) {
        const __m512bh qp = (__m512bh)_mm512_load_si512(qtv + p * QT);
#pragma GCC unroll 8
        for (int i = 0; i < KG; ++i)
          acc[i] = _mm512_dpbf16_ps(acc[i], qp, (__m512bh)_mm512_set1_epi32((int)kr[i * D2 + p]));
      }
      const int live = (nk - g * KG) < KG ? (int)(nk - g * KG) : KG; /* padded keys must not raise the max */
      for (int i = 0; i < KG; ++i) {
        _mm512_store_ps(S + (g * KG + i) * QT, acc[i]);
        if (i < live) bmax = _mm512_max_ps(bmax, acc[i]);
      }
    }
    const __m512 mnew = _mm512_max_ps(m, _mm512_mul_ps(bmax, s2));
    const __m512 corr = exp2_fast(_mm512_sub_ps(m, mnew)), neg = _mm512_sub_ps(_mm512_setzero_ps(), mnew);
    m = mnew;
    __m512 sum = _mm512_setzero_ps();
    for (int64_t p = 0; p < np; ++p) { /* probabilities against the new max, as VNNI pairs of keys */
      const __m512 e0 = exp2_fast(_mm512_fmadd_ps(_mm512_load_ps(S + 2 * p * QT), s2, neg));
      const __m512 e1 = 2 * p + 1 < nk ? exp2_fast(_mm512_fmadd_ps(_mm512_load_ps(S + (2 * p + 1) * QT), s2, neg))
                                       : _mm512_setzero_ps();
      sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
      _mm512_store_si512((__m512i *)(P + p * QT), vnni_pair(e0, e1));
    }
    l = _mm512_fmadd_ps(l, corr, sum);
    const uint32_t *vr = vh + (kb / 2) * D;
    for (int64_t d0 = 0; d0 < D; d0 += OR) {
      switch (OR) {
        case 20: pv_rows(20, ot, d0, P, vr, np, D, corr); break;
        case 16: pv_rows(16, ot, d0, P, vr, np, D, corr); break;
        case 8: pv_rows(8, ot, d0, P, vr, np, D, corr); break;
        case 4: pv_rows(4, ot, d0, P, vr, np, D, corr); break;
        default: pv_rows(2, ot, d0, P, vr, np, D, corr); break;
      }
    }
  }
  *lsum = l;
}

/* One thread: a contiguous range of (batch*head, query tile) tasks; each tile walks all keys of its head, which
 * stay in L2 (or L3) across the head's tiles. */
static void *worker(void *arg) {
  job_t *j = (job_t *)arg;
  const int64_t D = j->D, D2 = D / 2, ntiles = (j->Nq + QT - 1) / QT;
  float *S = aligned_alloc(64, j->block * QT * sizeof(float));
  uint32_t *P = aligned_alloc(64, j->block / 2 * QT * sizeof(uint32_t));
  float *ot = aligned_alloc(64, D * QT * sizeof(float));
  uint32_t *qtv = aligned_alloc(64, D2 * QT * sizeof(uint32_t));
  if (!S || !P || !ot || !qtv) {
    j->failed = 1;
    free(S), free(P), free(ot), free(qtv);
    return NULL;
  }
  /* Q rows can be gathered a dim pair (32 bits) at a time when every pair is 4-byte aligned */
  const int pairs_ok = !((uintptr_t)j->q & 3) && !((j->qs0 | j->qs1 | j->qs2) & 1);
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t t = j->task_begin; t < j->task_end; ++t) {
    const int64_t bh = t / ntiles, b = bh / j->H, h = bh % j->H, i0 = (t % ntiles) * QT;
    const int64_t rows = (j->Nq - i0) < QT ? (j->Nq - i0) : QT;
    const __mmask16 live = (__mmask16)((1u << rows) - 1);
    const uint16_t *q0 = j->q + b * j->qs0 + h * j->qs1 + i0 * j->qs2;
    if (pairs_ok) { /* Q^T as dim pairs: one 32-bit gather per pair over the tile's queries, zeros past the end */
      const __m512i idx = _mm512_mullo_epi32(lanes, _mm512_set1_epi32((int)(j->qs2 / 2)));
      for (int64_t p = 0; p < D2; ++p)
        _mm512_store_si512((__m512i *)(qtv + p * QT),
                           _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, idx, q0 + 2 * p, 4));
    } else {
      memset(qtv, 0, D2 * QT * sizeof(uint32_t));
      uint16_t *dst = (uint16_t *)qtv;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t d = 0; d < D; ++d) dst[((d >> 1) * QT + r) * 2 + (d & 1)] = q0[r * j->qs2 + d];
    }
    const uint32_t *kh = j->kp + bh * j->ldk * D2, *vh = j->vp + bh * (j->ldk / 2) * D;
    __m512 l;
    switch (D) { /* the head sizes SD 1.5 (40, 80, 160) and SD 2 (64) use, with D a compile-time constant */
      case 40: attend_tile(j, 40, qtv, kh, vh, S, P, ot, &l); break;
      case 64: attend_tile(j, 64, qtv, kh, vh, S, P, ot, &l); break;
      case 80: attend_tile(j, 80, qtv, kh, vh, S, P, ot, &l); break;
      case 160: attend_tile(j, 160, qtv, kh, vh, S, P, ot, &l); break;
      default: attend_tile(j, D, qtv, kh, vh, S, P, ot, &l); break;
    }
    /* normalise, round to bf16 (nearest even) and scatter each dim pair to the tile's 16 output rows */
    const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), l);
    const __m512i idx = _mm512_mullo_epi32(lanes, _mm512_set1_epi32((int)(j->H * D / 2)));
    uint16_t *o0 = j->out + ((b * j->Nq + i0) * j->H + h) * D;
    for (int64_t p = 0; p < D2; ++p) {
      const __m512 e0 = _mm512_mul_ps(_mm512_load_ps(ot + 2 * p * QT), inv);
      const __m512 e1 = _mm512_mul_ps(_mm512_load_ps(ot + (2 * p + 1) * QT), inv);
      const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(e0));
      const __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(e1));
      _mm512_mask_i32scatter_epi32(o0 + 2 * p, live, idx, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)), 4);
    }
  }
  free(S), free(P), free(ot), free(qtv);
  return NULL;
}

typedef struct {
  const uint16_t *k, *v;
  uint32_t *kp, *vp;
  int64_t H, Nk, D, ldk, ks0, ks1, ks2, vs0, vs1, vs2, begin, end;
} pack_t;

/* Pack K and V per (batch, head), zero padded to ldk keys: K rows contiguous (each D/2 dim pairs), V as key pairs,
 * each D 32-bit words (V[2j][d], V[2j+1][d]), so every broadcast the products make reads consecutive words. */
static void *packer(void *arg) {
  const pack_t *p = (const pack_t *)arg;
  const int64_t D = p->D;
  for (int64_t bh = p->begin; bh < p->end; ++bh) {
    const int64_t b = bh / p->H, h = bh % p->H;
    uint16_t *kd = (uint16_t *)(p->kp + bh * p->ldk * (D / 2));
    uint32_t *vd = p->vp + bh * (p->ldk / 2) * D;
    const uint16_t *ks = p->k + b * p->ks0 + h * p->ks1, *vs = p->v + b * p->vs0 + h * p->vs1;
    for (int64_t n = 0; n < p->ldk; ++n) {
      if (n < p->Nk)
        memcpy(kd + n * D, ks + n * p->ks2, D * sizeof(uint16_t));
      else
        memset(kd + n * D, 0, D * sizeof(uint16_t));
    }
    for (int64_t jp = 0; jp < p->ldk / 2; ++jp) {
      const uint16_t *v0 = 2 * jp < p->Nk ? vs + 2 * jp * p->vs2 : NULL;
      const uint16_t *v1 = 2 * jp + 1 < p->Nk ? vs + (2 * jp + 1) * p->vs2 : NULL;
      uint32_t *dst = vd + jp * D;
      for (int64_t d = 0; d < D; ++d) dst[d] = (v0 ? v0[d] : 0u) | (uint32_t)(v1 ? v1[d] : 0u) << 16;
    }
  }
  return NULL;
}

/* Keys padded to whole score groups. */
static int64_t padded_keys(int64_t Nk) { return ((Nk + KG - 1) / KG) * KG; }

/* bf16 elements of scratch memory bf16_attention needs (packed K and V). */
int64_t bf16_scratch_elems(int64_t B, int64_t H, int64_t Nk, int64_t D) { return 2 * B * H * padded_keys(Nk) * D; }

/* q, k, v: bf16 [B, H, N, D] with unit stride on D (any other strides); out: bf16 [B, Nq, H, D] contiguous.
 * `gomp`: GOMP_parallel of the OpenMP runtime the caller's process already runs, or NULL for POSIX threads.
 * Returns 0 on success, 1 for unsupported arguments, 2 when threads or memory could not be had. */
int bf16_attention(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out, uint16_t *scratch,
                   int64_t B, int64_t H, int64_t Nq, int64_t Nk, int64_t D, int64_t qs0, int64_t qs1, int64_t qs2,
                   int64_t ks0, int64_t ks1, int64_t ks2, int64_t vs0, int64_t vs1, int64_t vs2, double scale,
                   int64_t block, int64_t nthreads, void *gomp) {
  if (D < 2 || D > MAX_D || (D & 1) || !(scale > 0) || block <= 0 || block % KG || Nq <= 0 || Nk <= 0 || B <= 0 ||
      H <= 0 || nthreads < 1 || nthreads > TEAM_MAX_THREADS)
    return 1;
  const int64_t ldk = padded_keys(Nk), BH = B * H;
  uint32_t *kp = (uint32_t *)scratch, *vp = (uint32_t *)(scratch + BH * ldk * D);
  pack_t pk[TEAM_MAX_THREADS];
  job_t jobs[TEAM_MAX_THREADS];
  for (int64_t i = 0; i < nthreads; ++i)
    pk[i] = (pack_t){k, v, kp, vp, H, Nk, D, ldk, ks0, ks1, ks2, vs0, vs1, vs2, BH * i / nthreads,
                     BH * (i + 1) / nthreads};
  if (team_run((gomp_parallel_t)gomp, team_member_plain, packer, pk, sizeof pk[0], nthreads)) return 2;
  const int64_t ntasks = BH * ((Nq + QT - 1) / QT);
  for (int64_t i = 0; i < nthreads; ++i)
    jobs[i] = (job_t){q, kp, vp, out, H, Nq, Nk, D, ldk, block, qs0, qs1, qs2, (float)(scale * 1.4426950408889634),
                      ntasks * i / nthreads, ntasks * (i + 1) / nthreads, 0};
  if (team_run((gomp_parallel_t)gomp, team_member_plain, worker, jobs, sizeof jobs[0], nthreads)) return 2;
  for (int64_t i = 0; i < nthreads; ++i)
    if (jobs[i].failed) return 2;
  return 0;
}
