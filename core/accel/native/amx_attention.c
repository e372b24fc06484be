/* Fused bf16 self-attention for x86 CPUs with AMX (Intel Sapphire Rapids and newer).
 *
 * Built on first use by core/cpu_attention.py and called through ctypes. Flash-attention style: keys are
 * processed in blocks with an online softmax, so the N x N score matrix never leaves the L1 cache.
 *
 * Layout per (batch, head) and tile of 16 queries, chosen so that the softmax runs down columns (one query per
 * SIMD lane, no horizontal reductions):
 *   S^T (16 keys x 16 queries, fp32)  = K tile (16 keys x D, bf16 rows)  . Q^T (D x 16 queries, VNNI pairs)
 *   O^T (dpad x 16 queries, fp32)    += V^T tile (dpad x 32 keys, bf16) . P^T (32 keys x 16 queries, VNNI pairs)
 * K and V are packed once per call in exactly the order the tiles read them (64 contiguous bytes per tile row).
 * Row D of the packed V^T is all ones, so row D of O^T accumulates the softmax denominator on the AMX unit, from
 * the same bf16 probabilities as the numerator; dpad is D + 1 rounded up to whole 16-row tiles.
 *
 * Two paths. The narrow one, head sizes 34..46 (even), keeps everything on the 8 tile registers: Q^T, K, S^T and
 * the three O^T tiles (dpad = 48). SD 1.5's first UNet level (320 channels, 8 heads) has D = 40, and that level
 * holds most of the attention work. The wide one, even head sizes 48..160 (SD 1.5's deeper levels have 80 and 160),
 * keeps O^T in memory and streams it through one tile register per key block (see attend_tile_wide).
 *
 * Work runs on the OpenMP team PyTorch's own operators use when the caller passes that runtime's GOMP_parallel
 * (each member puts back the tile configuration oneDNN left on it), else on threads this library creates.
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common.h"

#define QT 16          /* queries per tile (one per SIMD lane) */
#define DPAD 48        /* narrow path: head dim plus the ones row, rounded up to three 16-row output tiles */
#define D_MAX 160      /* wide path: head sizes 48..160 */
#define BF16_ONE 0x3F80
#define LAZY_BITS 8.0f /* how far (base 2) a score may exceed the running max before O^T is rescaled */
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

typedef struct __attribute__((packed)) {
  uint8_t palette_id, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} tilecfg_t;

/* Ask Linux for permission to use AMX tile data in this process (kernel 5.16+). 0 on success. */
int amx_request(void) { return (int)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); }

typedef struct {
  const uint16_t *q, *kp, *vt; /* kp: packed K [BH][ldk][D]; vt: packed V^T [BH][dpad][ldk], row D all ones */
  uint16_t *out;               /* [B][Nq][H][D] */
  int64_t H, Nq, Nk, D, dpad, ldk, block, chunk;
  int64_t qs0, qs1, qs2;
  float scale2; /* softmax scale times log2(e) */
  int64_t task_begin, task_end;
  int failed;
} job_t;

typedef struct {
  float m[QT] __attribute__((aligned(64))); /* running max (base 2); every state in an array stays 64-byte aligned */
  float *ot; /* unnormalised O^T, dpad rows of 16 queries; row D the running denominator */
} state_t;

/* Rows of O^T (and of each packed V^T chunk): the head dims plus the ones row, rounded up to whole 16-row tiles. */
static inline int64_t dpad_of(int64_t D) { return (D + 1 + 15) / 16 * 16; }

/* bf16 elements of one query tile's Q^T: every 32 head dims (the last group may be shorter) as 16 VNNI pair rows. */
static inline int64_t qt_elems(int64_t D) { return (D + 31) / 32 * 16 * QT * 2; }

/* One group of 16 keys' scores, S^T = K Q^T (padded keys are zero rows), into `S`. Tiles 2, 3 hold Q^T. */
static inline void score_group(const job_t *j, const uint16_t *ka, float *S) {
  _tile_loadd(0, ka, 64);
  _tile_loadd(1, ka + 16 * 32, (j->D - 32) * 2);
  _tile_zero(4);
  _tile_dpbf16ps(4, 0, 2);
  _tile_dpbf16ps(4, 1, 3);
  _tile_stored(4, S, 64);
}

/* exp2(s * s2 - m) for two key rows, as one row of VNNI pairs. */
static inline __m512i exp_pair(__m512 x0, __m512 x1, __m512 s2, __m512 neg) {
  return vnni_pair(exp2_fast(_mm512_fmadd_ps(x0, s2, neg)), exp2_fast(_mm512_fmadd_ps(x1, s2, neg)));
}

/* Score row r of a block with nk keys; rows past the end read as a very low score, whose exp2 is exactly 0. */
static inline __m512 score_row(const float *S, int64_t r, int64_t nk) {
  return r < nk ? _mm512_load_ps(S + r * QT) : _mm512_set1_ps(-1e30f);
}

/* Block n of a tile's keys [kb, k1): its key count, the next block's start, its groups of 16 keys (rounded to 32)
 * and the next block's, and its halves of the double-buffered scores and probabilities. */
typedef struct {
  int64_t nk, kn, gp, gn;
  const float *S;
  float *Sn; /* the next block's scores */
  uint16_t *P;
} block_t;

static inline block_t block_at(int64_t kb, int64_t k1, int64_t block, int64_t n, float *S2, uint16_t *P2) {
  block_t b;
  b.nk = (k1 - kb) < block ? (k1 - kb) : block;
  b.kn = kb + block;
  const int64_t nkn = b.kn < k1 ? ((k1 - b.kn) < block ? (k1 - b.kn) : block) : 0;
  b.gp = ((b.nk + 31) / 32) * 2;
  b.gn = (nkn + 15) / 16;
  b.S = S2 + (n & 1) * block * QT;
  b.Sn = S2 + ((n + 1) & 1) * block * QT;
  b.P = P2 + (n & 1) * block * QT;
  return b;
}

/* A tile's first block (the running max still at its start value) takes its exact maximum up front. */
static inline __m512 first_block_max(__m512 m, const float *S, int64_t nk, __m512 s2) {
  if (!_mm512_cmp_ps_mask(m, _mm512_set1_ps(-1e30f), _CMP_LE_OQ)) return m;
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t r = 0; r < nk; ++r) mx = _mm512_max_ps(mx, _mm512_load_ps(S + r * QT));
  return _mm512_max_ps(m, _mm512_mul_ps(mx, s2));
}

/* The lazy maximum's check after a block's softmax (bmax: its highest raw score per query). When a score rose more
 * than LAZY_BITS above m, the block's probabilities are redone against the new maximum, m moves, and the factor
 * O^T must be scaled by goes to *corr: returns 1. Else 0, nothing to do. */
static inline int lazy_redo(__m512 *m, __m512 bmax, __m512 s2, const block_t *b, __m512 *corr) {
  const __m512 mblk = _mm512_mul_ps(bmax, s2);
  if (!_mm512_cmp_ps_mask(mblk, _mm512_add_ps(*m, _mm512_set1_ps(LAZY_BITS)), _CMP_GT_OQ)) return 0;
  const __m512 mnew = _mm512_max_ps(*m, mblk), neg = _mm512_sub_ps(_mm512_setzero_ps(), mnew);
  *corr = exp2_fast(_mm512_sub_ps(*m, mnew));
  *m = mnew;
  for (int64_t p = 0; p < b->gp * 8; ++p)
    _mm512_store_si512((__m512i *)(b->P + p * 32),
                       exp_pair(score_row(b->S, 2 * p, b->nk), score_row(b->S, 2 * p + 1, b->nk), s2, neg));
  return 1;
}

/* Rows 0..D of O^T (the numerators and the denominator) times corr. */
static inline void scale_rows(float *OT, int64_t D, __m512 corr) {
  for (int64_t d = 0; d <= D; ++d) _mm512_store_ps(OT + d * QT, _mm512_mul_ps(_mm512_load_ps(OT + d * QT), corr));
}

/* O^T += V^T P^T for one chunk of 32 keys whose probabilities are at P. Tile 4 takes P, tile 0 each V^T tile. */
static inline void pv_chunk(const uint16_t *va, const uint16_t *P) {
  _tile_loadd(4, P, 64);
  _tile_loadd(0, va, 64);
  _tile_dpbf16ps(5, 0, 4);
  _tile_loadd(0, va + 16 * 32, 64);
  _tile_dpbf16ps(6, 0, 4);
  _tile_loadd(0, va + 32 * 32, 64);
  _tile_dpbf16ps(7, 0, 4);
}

/* Attend one 16-query tile to keys [k0, k1), updating its running state.
 *
 * Three stages overlap: while the softmax of block n runs, 16 score rows at a time from registers, the next block's
 * score groups and the previous block's O^T += V^T P^T chunks are issued between those rows, so the AMX unit has
 * work queued that does not wait on the probabilities being written. The softmax is single-pass with a lazy
 * maximum: probabilities are taken against the running maximum m, and only when some score exceeds it by more than
 * LAZY_BITS (base 2) is the block redone against the new maximum and O^T (which by then holds every earlier block)
 * rescaled. So exp2 values stay below 2^LAZY_BITS, and as a tile's first block takes its exact maximum up front,
 * the extra pass is rare. */
static void attend_tile(const job_t *j, const uint16_t *qtv, const uint16_t *kh, const uint16_t *vth, int64_t k0,
                        int64_t k1, state_t *st, float *S2, uint16_t *P2) {
  const int64_t D = j->D, block = j->block;
  const __m512 s2 = _mm512_set1_ps(j->scale2);
  __m512 m = _mm512_load_ps(st->m), corr;
  float *OT = st->ot;
  _tile_loadd(2, qtv, 64);
  _tile_loadd(3, qtv + 16 * QT * 2, 64);
  for (int64_t g = 0; g < ((k1 - k0 < block ? k1 - k0 : block) + 15) / 16; ++g)
    score_group(j, kh + (k0 + g * 16) * D, S2 + g * 16 * QT);
  _tile_loadd(5, OT, 64);
  _tile_loadd(6, OT + 16 * QT, 64);
  _tile_loadd(7, OT + 32 * QT, 64);
  const uint16_t *pv_v = NULL, *pv_p = NULL; /* the previous block's V^T and probabilities, still to be added */
  int64_t pv_n = 0;                          /* its chunks of 32 keys */
  int64_t n = 0;
  for (int64_t kb = k0; kb < k1; kb += block, ++n) {
    const block_t b = block_at(kb, k1, block, n, S2, P2);
    const int64_t nk = b.nk, kn = b.kn, gp = b.gp, gn = b.gn;
    const float *S = b.S;
    float *Sn = b.Sn;
    uint16_t *P = b.P;
    m = first_block_max(m, S, nk, s2);
    const __m512 neg = _mm512_sub_ps(_mm512_setzero_ps(), m);
    __m512 bmax = _mm512_set1_ps(-INFINITY);
    int64_t c = 0; /* next chunk of the previous block */
    for (int64_t g = 0; g < gp; ++g) {
      __m512 x[16];
      if ((g + 1) * 16 <= nk) {
        for (int i = 0; i < 16; ++i) x[i] = _mm512_load_ps(S + (g * 16 + i) * QT);
      } else {
        for (int i = 0; i < 16; ++i) x[i] = score_row(S, g * 16 + i, nk);
      }
      if (g < gn) score_group(j, kh + (kn + g * 16) * D, Sn + g * 16 * QT);
      if ((g & 1) && c < pv_n) pv_chunk(pv_v + c * 32 * DPAD, pv_p + c * 16 * 32), ++c;
      __m512 t[8];
      for (int i = 0; i < 8; ++i) t[i] = _mm512_max_ps(x[i], x[i + 8]);
      for (int i = 0; i < 4; ++i) t[i] = _mm512_max_ps(t[i], t[i + 4]);
      bmax = _mm512_max_ps(bmax, _mm512_max_ps(_mm512_max_ps(t[0], t[1]), _mm512_max_ps(t[2], t[3])));
      for (int i = 0; i < 8; ++i)
        _mm512_store_si512((__m512i *)(P + (g * 8 + i) * 32), exp_pair(x[2 * i], x[2 * i + 1], s2, neg));
    }
    for (int64_t g = gp; g < gn; ++g) score_group(j, kh + (kn + g * 16) * D, Sn + g * 16 * QT);
    for (; c < pv_n; ++c) pv_chunk(pv_v + c * 32 * DPAD, pv_p + c * 16 * 32);
    if (lazy_redo(&m, bmax, s2, &b, &corr)) { /* a score rose too far: O^T (every earlier block) is rescaled */
      _tile_stored(5, OT, 64);
      _tile_stored(6, OT + 16 * QT, 64);
      _tile_stored(7, OT + 32 * QT, 64);
      scale_rows(OT, D, corr);
      _tile_loadd(5, OT, 64);
      _tile_loadd(6, OT + 16 * QT, 64);
      _tile_loadd(7, OT + 32 * QT, 64);
    }
    pv_v = vth + kb * DPAD, pv_p = P, pv_n = gp / 2;
  }
  for (int64_t c = 0; c < pv_n; ++c) pv_chunk(pv_v + c * 32 * DPAD, pv_p + c * 16 * 32);
  _tile_stored(5, OT, 64);
  _tile_stored(6, OT + 16 * QT, 64);
  _tile_stored(7, OT + 32 * QT, 64);
  _mm512_store_ps(st->m, m);
}

/* The wide path (head sizes 48..160). Its output has up to 11 O^T tiles, more than the 8 tile registers hold beside
 * Q^T, K and S, so O^T lives in the tile's state and streams through tile 2 once per key block. Tiles:
 *   0: K (32 head dims) or V^T (16 dims x 32 keys); 1: K's last, shorter group of dims; 2: S^T or one O^T tile;
 *   3..6: Q^T (32 dims each) while scoring, one block's P^T chunks while accumulating; 7: Q^T's last group. */
static inline void wide_tile_load(int t, const void *base) { /* tile numbers are immediates: one case per tile */
  switch (t) {
    case 3: _tile_loadd(3, base, 64); break;
    case 4: _tile_loadd(4, base, 64); break;
    case 5: _tile_loadd(5, base, 64); break;
    case 6: _tile_loadd(6, base, 64); break;
    default: _tile_loadd(7, base, 64); break;
  }
}

static inline void wide_dot(int t) { /* tile 2 += tile 0 . tile t */
  switch (t) {
    case 3: _tile_dpbf16ps(2, 0, 3); break;
    case 4: _tile_dpbf16ps(2, 0, 4); break;
    case 5: _tile_dpbf16ps(2, 0, 5); break;
    case 6: _tile_dpbf16ps(2, 0, 6); break;
    default: _tile_dpbf16ps(2, 0, 7); break;
  }
}

/* Q^T onto tiles 3.. (full groups of 32 dims) and 7 (a shorter last group). */
static inline void wide_load_q(const uint16_t *qtv, int64_t D) {
  const int64_t full = D / 32;
  for (int64_t p = 0; p < full; ++p) wide_tile_load((int)(3 + p), qtv + p * 16 * QT * 2);
  if (D % 32) _tile_loadd(7, qtv + full * 16 * QT * 2, 64);
}

/* S^T for one group of 16 keys (packed as in `packer`) into `S`. */
static inline void wide_score_group(int64_t D, const uint16_t *ka, float *S) {
  const int64_t full = D / 32, rest = D % 32;
  _tile_zero(2);
  for (int64_t p = 0; p < full; ++p) {
    _tile_loadd(0, ka + p * 16 * 32, 64);
    wide_dot((int)(3 + p));
  }
  if (rest) {
    _tile_loadd(1, ka + full * 16 * 32, rest * 2);
    _tile_dpbf16ps(2, 1, 7);
  }
  _tile_stored(2, S, 64);
}

/* O^T += V^T P^T for nc chunks of 32 keys (V^T chunks from vb, probabilities from P), four chunks at a time: their
 * P^T tiles stay on tiles 3..6 while each O^T tile is loaded, accumulated and stored. Leaves Q^T off its tiles. */
static inline void wide_pv(const uint16_t *vb, const uint16_t *P, int64_t nc, int64_t dpad, float *OT) {
  for (int64_t c0 = 0; c0 < nc; c0 += 4) {
    const int64_t m = (nc - c0) < 4 ? (nc - c0) : 4;
    for (int64_t c = 0; c < m; ++c) wide_tile_load((int)(3 + c), P + (c0 + c) * 16 * 32);
    for (int64_t t = 0; t < dpad / 16; ++t) {
      _tile_loadd(2, OT + t * 16 * QT, 64);
      for (int64_t c = 0; c < m; ++c) {
        _tile_loadd(0, vb + (c0 + c) * 32 * dpad + t * 16 * 32, 64);
        wide_dot((int)(3 + c));
      }
      _tile_stored(2, OT + t * 16 * QT, 64);
    }
  }
}

/* attend_tile for the wide path. Per key block n, the AMX unit is given the next block's scores and the previous
 * block's O^T += V^T P^T before the softmax of block n runs on the vector units; the lazy maximum is as above, with
 * the rescale applied to O^T in memory. */
static void attend_tile_wide(const job_t *j, const uint16_t *qtv, const uint16_t *kh, const uint16_t *vth,
                             int64_t k0, int64_t k1, state_t *st, float *S2, uint16_t *P2) {
  const int64_t D = j->D, block = j->block, dpad = j->dpad;
  const __m512 s2 = _mm512_set1_ps(j->scale2);
  __m512 m = _mm512_load_ps(st->m), corr;
  float *OT = st->ot;
  wide_load_q(qtv, D);
  for (int64_t g = 0; g < ((k1 - k0 < block ? k1 - k0 : block) + 15) / 16; ++g)
    wide_score_group(D, kh + (k0 + g * 16) * D, S2 + g * 16 * QT);
  const uint16_t *pv_v = NULL, *pv_p = NULL; /* the previous block's V^T and probabilities, still to be added */
  int64_t pv_n = 0;                          /* its chunks of 32 keys */
  int64_t n = 0;
  for (int64_t kb = k0; kb < k1; kb += block, ++n) {
    const block_t b = block_at(kb, k1, block, n, S2, P2);
    for (int64_t g = 0; g < b.gn; ++g) wide_score_group(D, kh + (b.kn + g * 16) * D, b.Sn + g * 16 * QT);
    if (pv_n) {
      wide_pv(pv_v, pv_p, pv_n, dpad, OT);
      if (b.gn) wide_load_q(qtv, D);
    }
    m = first_block_max(m, b.S, b.nk, s2);
    const __m512 neg = _mm512_sub_ps(_mm512_setzero_ps(), m);
    __m512 bmax = _mm512_set1_ps(-INFINITY);
    for (int64_t p = 0; p < b.gp * 8; ++p) {
      const __m512 x0 = score_row(b.S, 2 * p, b.nk), x1 = score_row(b.S, 2 * p + 1, b.nk);
      bmax = _mm512_max_ps(bmax, _mm512_max_ps(x0, x1));
      _mm512_store_si512((__m512i *)(b.P + p * 32), exp_pair(x0, x1, s2, neg));
    }
    if (lazy_redo(&m, bmax, s2, &b, &corr)) scale_rows(OT, D, corr); /* O^T in memory holds every earlier block */
    pv_v = vth + kb * dpad, pv_p = b.P, pv_n = b.gp / 2;
  }
  wide_pv(pv_v, pv_p, pv_n, dpad, OT);
  _mm512_store_ps(st->m, m);
}

/* One thread: a contiguous range of (batch*head, query tile) tasks. Keys are walked in L2-sized chunks, each
 * chunk against all of the thread's query tiles of that head, so K and V are read from L2, not memory. */
static void *worker(void *arg) {
  job_t *j = (job_t *)arg;
  const int64_t D = j->D, ntiles = (j->Nq + QT - 1) / QT;
  const int64_t most = (j->task_end - j->task_begin) < ntiles ? (j->task_end - j->task_begin) : ntiles;
  if (most <= 0) return NULL;
  const int64_t dpad = j->dpad, qte = qt_elems(D);
  const int wide = dpad > DPAD;
  float *S = aligned_alloc(64, 2 * j->block * QT * sizeof(float)); /* two blocks: one scored, one softmaxed */
  uint16_t *P = aligned_alloc(64, 2 * j->block * QT * sizeof(uint16_t));
  state_t *st = aligned_alloc(64, most * sizeof(state_t));
  float *ot = aligned_alloc(64, most * dpad * QT * sizeof(float));
  uint16_t *qtv = aligned_alloc(64, most * qte * sizeof(uint16_t));
  if (!S || !P || !st || !ot || !qtv) {
    j->failed = 1;
    free(S), free(P), free(st), free(ot), free(qtv);
    return NULL;
  }
  tilecfg_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int i = 0; i < 8; ++i) cfg.rows[i] = 16, cfg.colsb[i] = 64;
  if (!wide) {
    cfg.colsb[1] = (uint16_t)((D - 32) * 2); /* K tile, head dims 32..D-1 */
    cfg.rows[3] = (uint8_t)((D - 32) / 2);   /* Q^T tile, the same dims as VNNI pairs */
  } else if (D % 32) {
    cfg.colsb[1] = (uint16_t)(D % 32 * 2); /* K's last group of dims */
    cfg.rows[7] = (uint8_t)(D % 32 / 2);   /* Q^T's, as VNNI pairs */
  }
  _tile_loadconfig(&cfg);
  /* Q rows can be gathered a dim pair (32 bits) at a time when every pair is 4-byte aligned */
  const int pairs_ok = !((uintptr_t)j->q & 3) && !((j->qs0 | j->qs1 | j->qs2) & 1);
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t t0 = j->task_begin; t0 < j->task_end;) {
    const int64_t bh = t0 / ntiles, b = bh / j->H, h = bh % j->H;
    const int64_t t1 = (bh + 1) * ntiles < j->task_end ? (bh + 1) * ntiles : j->task_end;
    const int64_t n = t1 - t0, first = t0 - bh * ntiles;
    for (int64_t i = 0; i < n; ++i) { /* Q^T in VNNI pairs, zero padded; fresh state */
      const int64_t i0 = (first + i) * QT, rows = (j->Nq - i0) < QT ? (j->Nq - i0) : QT;
      uint16_t *dst = qtv + i * qte;
      const uint16_t *q0 = j->q + b * j->qs0 + h * j->qs1 + i0 * j->qs2;
      memset(dst, 0, qte * sizeof(uint16_t));
      if (pairs_ok) { /* gather each dim pair (one 32-bit word) of the tile's 16 queries */
        const __m512i idx = _mm512_mullo_epi32(lanes, _mm512_set1_epi32((int)(j->qs2 / 2)));
        const __mmask16 live = (__mmask16)((1u << rows) - 1);
        for (int64_t p = 0; p < D / 2; ++p)
          _mm512_store_si512((__m512i *)(dst + p * QT * 2),
                             _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, idx, q0 + 2 * p, 4));
      } else {
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t d = 0; d < D; ++d) dst[((d >> 1) * QT + r) * 2 + (d & 1)] = q0[r * j->qs2 + d];
      }
      for (int k = 0; k < QT; ++k) st[i].m[k] = -1e30f;
      st[i].ot = ot + i * dpad * QT;
      memset(st[i].ot, 0, dpad * QT * sizeof(float));
    }
    const uint16_t *kh = j->kp + bh * j->ldk * D, *vth = j->vt + bh * dpad * j->ldk;
    for (int64_t c0 = 0; c0 < j->Nk; c0 += j->chunk) {
      const int64_t c1 = (c0 + j->chunk) < j->Nk ? (c0 + j->chunk) : j->Nk;
      for (int64_t i = 0; i < n; ++i) {
        if (wide)
          attend_tile_wide(j, qtv + i * qte, kh, vth, c0, c1, &st[i], S, P);
        else
          attend_tile(j, qtv + i * qte, kh, vth, c0, c1, &st[i], S, P);
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t i0 = (first + i) * QT, rows = (j->Nq - i0) < QT ? (j->Nq - i0) : QT;
      /* normalise, round to bf16 (nearest even) and scatter each dim pair to the tile's 16 output rows */
      const float *ot = st[i].ot;
      const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_load_ps(ot + D * QT));
      const __m512i idx = _mm512_mullo_epi32(lanes, _mm512_set1_epi32((int)(j->H * D / 2)));
      const __mmask16 live = (__mmask16)((1u << rows) - 1);
      uint16_t *o0 = j->out + ((b * j->Nq + i0) * j->H + h) * D;
      for (int64_t p = 0; p < D / 2; ++p) {
        const __m512 e0 = _mm512_mul_ps(_mm512_load_ps(ot + 2 * p * QT), inv);
        const __m512 e1 = _mm512_mul_ps(_mm512_load_ps(ot + (2 * p + 1) * QT), inv);
        const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(e0));
        const __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(e1));
        _mm512_mask_i32scatter_epi32(o0 + 2 * p, live, idx, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)), 4);
      }
    }
    t0 = t1;
  }
  _tile_release();
  free(S), free(P), free(st), free(ot), free(qtv);
  return NULL;
}

typedef struct {
  const uint16_t *k, *v;
  uint16_t *kp, *vt;
  int64_t H, Nk, D, ldk, ks0, ks1, ks2, vs0, vs1, vs2, begin, end;
} pack_t;

/* Pack K and V per (batch, head), zero padded to ldk keys, in the order the tiles read them, so every tile row is
 * a contiguous 64 bytes (a long row stride would put a tile's rows in a few L1 sets, missing on every load):
 *   K:   groups of 16 keys, each 16 rows of dims 0..31, then of 32..63 and so on, then of the last D % 32 dims;
 *   V^T: chunks of 32 keys, each dpad_of(D) rows (dims) of 32 keys, row D all ones. */
static void *packer(void *arg) {
  pack_t *p = (pack_t *)arg;
  for (int64_t bh = p->begin; bh < p->end; ++bh) {
    const int64_t b = bh / p->H, h = bh % p->H;
    const int64_t D = p->D, dpad = dpad_of(D), full = D / 32, rest = D % 32;
    uint16_t *kd = p->kp + bh * p->ldk * D, *vd = p->vt + bh * dpad * p->ldk;
    const uint16_t *ks = p->k + b * p->ks0 + h * p->ks1, *vs = p->v + b * p->vs0 + h * p->vs1;
    for (int64_t c = 0; c < p->ldk / 32; ++c) { /* per V^T chunk: the ones row, zero rows below it */
      uint16_t *vc = vd + c * dpad * 32;
      for (int64_t n = 0; n < 32; ++n) vc[D * 32 + n] = BF16_ONE;
      memset(vc + (D + 1) * 32, 0, (dpad - D - 1) * 32 * sizeof(uint16_t));
    }
    for (int64_t n = 0; n < p->ldk; ++n) { /* every key's K row and V column; padded keys are zeros */
      uint16_t *kg = kd + (n >> 4) * 16 * D, *vc = vd + (n >> 5) * dpad * 32 + (n & 31);
      const uint16_t *kr = ks + n * p->ks2;
      const int live = n < p->Nk;
      for (int64_t g = 0; g < full; ++g) {
        if (live)
          memcpy(kg + g * 16 * 32 + (n & 15) * 32, kr + g * 32, 32 * sizeof(uint16_t));
        else
          memset(kg + g * 16 * 32 + (n & 15) * 32, 0, 32 * sizeof(uint16_t));
      }
      if (rest && live) memcpy(kg + full * 16 * 32 + (n & 15) * rest, kr + full * 32, rest * sizeof(uint16_t));
      if (rest && !live) memset(kg + full * 16 * 32 + (n & 15) * rest, 0, rest * sizeof(uint16_t));
      for (int64_t d = 0; d < D; ++d) vc[d * 32] = live ? vs[n * p->vs2 + d] : 0;
    }
  }
  return NULL;
}

/* Padded key count for a given block size. */
static int64_t padded_keys(int64_t Nk, int64_t block) { return ((Nk + block - 1) / block) * block; }

/* bf16 elements of scratch memory amx_attention needs. */
int64_t amx_scratch_elems(int64_t B, int64_t H, int64_t Nk, int64_t D, int64_t block) {
  const int64_t ldk = padded_keys(Nk, block);
  return B * H * ldk * (D + dpad_of(D));
}

/* One OpenMP team member: takes items until none are left. These are PyTorch's own threads, whose tile
 * configuration oneDNN may have set and cached (it skips reconfiguring when its palette is still loaded), so the
 * configuration found on entry is put back before returning. */
static void team_member(void *arg) {
  tilecfg_t saved;
  _tile_storeconfig(&saved); /* all zeros when no tiles are configured */
  team_take_items((team_t *)arg);
  if (saved.palette_id) _tile_loadconfig(&saved);
}

/* q, k, v: bf16 [B, H, N, D] with unit stride on D (any other strides); out: bf16 [B, Nq, H, D] contiguous.
 * `gomp`: GOMP_parallel of the OpenMP runtime the caller's process already runs, or NULL for POSIX threads.
 * Returns 0 on success, 1 for unsupported arguments, 2 when threads or memory could not be had. */
int amx_attention(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out, uint16_t *scratch,
                  int64_t B, int64_t H, int64_t Nq, int64_t Nk, int64_t D, int64_t qs0, int64_t qs1, int64_t qs2,
                  int64_t ks0, int64_t ks1, int64_t ks2, int64_t vs0, int64_t vs1, int64_t vs2, double scale,
                  int64_t block, int64_t chunk, int64_t nthreads, void *gomp) {
  if (D <= 32 || D > D_MAX || (D & 1) || !(scale > 0) || block <= 0 || block % 32 || chunk <= 0 ||
      chunk % block || Nq <= 0 || Nk <= 0 || B <= 0 || H <= 0 || nthreads < 1 || nthreads > TEAM_MAX_THREADS)
    return 1;
  const int64_t ldk = padded_keys(Nk, block), BH = B * H;
  uint16_t *kp = scratch, *vt = scratch + BH * ldk * D;
  const int64_t dpad = dpad_of(D);
  pack_t pk[TEAM_MAX_THREADS];
  job_t jobs[TEAM_MAX_THREADS];
  for (int64_t i = 0; i < nthreads; ++i)
    pk[i] = (pack_t){k, v, kp, vt, H, Nk, D, ldk, ks0, ks1, ks2, vs0, vs1, vs2, BH * i / nthreads,
                     BH * (i + 1) / nthreads};
  if (team_run((gomp_parallel_t)gomp, team_member, packer, pk, sizeof pk[0], nthreads)) return 2;
  const int64_t ntasks = BH * ((Nq + QT - 1) / QT);
  for (int64_t i = 0; i < nthreads; ++i)
    jobs[i] = (job_t){q, kp, vt, out, H, Nq, Nk, D, dpad, ldk, block, chunk, qs0, qs1, qs2,
                      (float)(scale * 1.4426950408889634), ntasks * i / nthreads, ntasks * (i + 1) / nthreads, 0};
  if (team_run((gomp_parallel_t)gomp, team_member, worker, jobs, sizeof jobs[0], nthreads)) return 2;
  for (int64_t i = 0; i < nthreads; ++i)
    if (jobs[i].failed) return 2;
  return 0;
}
