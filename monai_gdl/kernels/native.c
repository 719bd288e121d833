/*
 * Fused Dice statistics and their gradient on CPU, one pass over the input per call.
 *
 * Built by monai_gdl/kernels/native.py with the machine's C compiler (-O3 -march=native) on first
 * use. The math is that of monai_gdl.kernels.reference.forward_chunk / backward_chunk (the reference
 * in the tests); only the schedule differs: the volume is walked in tiles of T voxels of one sample, and
 * for each tile the C x T probabilities live in a buffer that stays in the L1/L2 cache, so every
 * logit is read from memory once per call and every gradient value written once.
 *
 * A compound loss adds the voxel-wise term l (softmax cross-entropy / focal, or sigmoid binary
 * cross-entropy / focal, see monai_gdl/kernels/contract.py) in the same passes: its sums F and Q in
 * the forward, its gradient added into the same gradient buffer in the backward.
 *
 * A structure term (Skeleton Recall, boundary loss) adds a per-voxel map a: a label map (a_c = [map == c])
 * or a dense float32 map (a_c = map_c); the forward adds W = sum m a p and S = sum m a, the backward
 * m dL/dW a to dL/dp (before the activation's chain).
 *
 * Layouts: x is B x C x N (contiguous) or B x N x C (channels-last, then so is the gradient), a
 * label map B x N, a dense target (float32, or bool/uint8 0/1) B x C x N or B x N x C, a mask B x N (uint8), a map
 * B x N (labels) or B x C x N (dense). Label maps, dense targets stored B x C x N and maps may have any
 * batch stride (t_bstride, w_bstride, in elements: e.g. channels of one packed target tensor).
 * Channels-last tiles are transposed into C x T scratch on the way in (and out). Each call covers the voxel range [n0, n1) of every sample, so callers can
 * split the volume between threads. Sums are per tile in float32 vector lanes, across tiles in
 * double.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

enum { ACT_NONE = 0, ACT_SOFTMAX = 1, ACT_SIGMOID = 2 };
enum { X_F32 = 0, X_BF16 = 1, X_F16 = 2 };
enum {
    T_DENSE_F32 = 0,
    T_LABEL_U8 = 1,
    T_LABEL_I32 = 2,
    T_LABEL_I64 = 3,
    T_LABEL_F32 = 4,
    T_LABEL_I16 = 5,
    T_LABEL_I8 = 6,
    T_DENSE_U8 = 7 /* a bool / uint8 one-hot target (nnU-Net's regions), staged as float rows per tile */
};
#define IS_DENSE(tt) ((tt) == T_DENSE_F32 || (tt) == T_DENSE_U8)
/* Layout bits: logits (and so the gradient) / dense target stored channels-last, i.e. B x N x C. */
enum { LAYOUT_X_CHANNELS_LAST = 1, LAYOUT_T_CHANNELS_LAST = 2 };
/* Option bits: squared denominator (k = 2); soft-label intersection min(p, g) for a dense target;
 * the voxel-wise term of a compound loss (softmax CE/focal or sigmoid BCE/focal, exponent gamma). */
enum { OPT_SQUARED = 1, OPT_SOFT = 2, OPT_TERM_SOFTMAX = 4, OPT_TERM_SIGMOID = 8 };

/* exp(x) in float32, vectorizable (no libm call): Cody-Waite reduction by ln 2, then the Cephes
 * degree-6 polynomial; about 1 ulp. Inputs are clamped to [-87, 88] (results stay normal). A NaN
 * input gives NaN (the comparisons below keep it), so NaN logits reach the statistics. */
static inline float exp_f32(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float n = (x * 1.44269504088896341f + shifter) - shifter;
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float q = 1.9875691500e-4f;
    q = q * r + 1.3981999507e-3f;
    q = q * r + 8.3334519073e-3f;
    q = q * r + 4.1665795894e-2f;
    q = q * r + 1.6666665459e-1f;
    q = q * r + 5.0000001201e-1f;
    q = q * (r * r) + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return q * scale;
}

/* log(x) in float32, vectorizable: exponent split, mantissa in [sqrt(1/2), sqrt(2)), then the
 * Cephes degree-9 polynomial; about 1 ulp. x <= 0 and denormals are clamped to FLT_MIN (log about
 * -87.3: the callers take logs of probabilities and sums of exps, where that floor is harmless). */
static inline float log_f32(float x) {
    x = x < 1.17549435e-38f ? 1.17549435e-38f : x;
    int32_t bits;
    memcpy(&bits, &x, sizeof bits);
    float e = (float)(((bits >> 23) & 0xff) - 126);
    bits = (bits & 0x007fffff) | 0x3f000000; /* mantissa in [0.5, 1) */
    float m;
    memcpy(&m, &bits, sizeof m);
    const int small = m < 0.707106781186547524f;
    e = small ? e - 1.0f : e;
    float f = small ? m + m - 1.0f : m - 1.0f;
    float z = f * f;
    float y = 7.0376836292e-2f;
    y = y * f - 1.1514610310e-1f;
    y = y * f + 1.1676998740e-1f;
    y = y * f - 1.2420140846e-1f;
    y = y * f + 1.4249322787e-1f;
    y = y * f - 1.6668057665e-1f;
    y = y * f + 2.0000714765e-1f;
    y = y * f - 2.4999993993e-1f;
    y = y * f + 3.3333331174e-1f;
    y = y * f * z;
    y += -2.12194440e-4f * e;
    y += -0.5f * z;
    return f + y + 0.693359375f * e;
}

/* softplus(x) = log(1 + exp(x)), stable for any x. */
static inline float softplus_f32(float x) {
    float ax = x < 0.0f ? -x : x;
    return (x > 0.0f ? x : 0.0f) + log_f32(1.0f + exp_f32(-ax));
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u); /* quiet NaN */
    bits += 0x7fffu + ((bits >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(bits >> 16);
}

/* float16 needs a compiler with _Float16 (GCC >= 12, recent Clang); elsewhere the type is a stub
 * and mgdl_has_float16() tells the caller to send float16 logits to the other backends. */
#if defined(__FLT16_MAX__)
#define HAS_FLOAT16 1
typedef _Float16 float16_t;
#else
#define HAS_FLOAT16 0
typedef uint16_t float16_t;
#endif

int mgdl_has_float16(void) { return HAS_FLOAT16; }

#define LOAD_F32(v) (v)
#define LOAD_BF16(v) bf16_to_f32(v)
#define LOAD_F16(v) ((float)(v))
#define STORE_F32(v) (v)
#define STORE_BF16(v) f32_to_bf16(v)
#define STORE_F16(v) ((float16_t)(v))

/* Activation of the tile [v0, v0 + len) of one sample, as p[c*T + v] = e[c*T + v] * scale[v]:
 * softmax leaves the exps unnormalised (scale = 1 / sum; consumers fold the division into their
 * own pass), sigmoid and none have scale = 1. mx: T floats of scratch. */
#define DEFINE_ACTIVATE(NAME, XT, LOAD)                                                            \
    static void NAME(const XT *restrict x, int64_t N, int64_t C, int64_t v0, int len, int T,     \
                     int act, float *restrict e, float *restrict scale, float *restrict mx) {     \
        if (act == ACT_SOFTMAX) {                                                                  \
            const XT *restrict row0 = x + v0;                                                      \
            for (int v = 0; v < len; ++v) mx[v] = LOAD(row0[v]);                                   \
            for (int64_t c = 1; c < C; ++c) {                                                      \
                const XT *restrict row = x + c * N + v0;                                           \
                for (int v = 0; v < len; ++v) {                                                    \
                    float xv = LOAD(row[v]);                                                       \
                    mx[v] = xv > mx[v] ? xv : mx[v];                                               \
                }                                                                                  \
            }                                                                                      \
            for (int v = 0; v < len; ++v) scale[v] = 0.0f;                                         \
            for (int64_t c = 0; c < C; ++c) {                                                      \
                const XT *restrict row = x + c * N + v0;                                           \
                float *restrict ec = e + c * T;                                                    \
                for (int v = 0; v < len; ++v) {                                                    \
                    float ev = exp_f32(LOAD(row[v]) - mx[v]);                                      \
                    ec[v] = ev;                                                                    \
                    scale[v] += ev;                                                                \
                }                                                                                  \
            }                                                                                      \
            for (int v = 0; v < len; ++v) scale[v] = 1.0f / scale[v];                              \
        } else {                                                                                   \
            for (int v = 0; v < len; ++v) scale[v] = 1.0f;                                         \
            for (int64_t c = 0; c < C; ++c) {                                                      \
                const XT *restrict row = x + c * N + v0;                                           \
                float *restrict ec = e + c * T;                                                    \
                if (act == ACT_SIGMOID)                                                            \
                    for (int v = 0; v < len; ++v) ec[v] = 1.0f / (1.0f + exp_f32(-LOAD(row[v])));  \
                else                                                                               \
                    for (int v = 0; v < len; ++v) ec[v] = LOAD(row[v]);                            \
            }                                                                                      \
        }                                                                                          \
    }

DEFINE_ACTIVATE(activate_f32, float, LOAD_F32)
DEFINE_ACTIVATE(activate_bf16, uint16_t, LOAD_BF16)
DEFINE_ACTIVATE(activate_f16, float16_t, LOAD_F16)

static void activate(const void *x, int xtype, int64_t N, int64_t C, int64_t v0, int len, int T, int act,
                     float *e, float *scale, float *mx) {
    if (xtype == X_F32) activate_f32((const float *)x, N, C, v0, len, T, act, e, scale, mx);
    else if (xtype == X_BF16) activate_bf16((const uint16_t *)x, N, C, v0, len, T, act, e, scale, mx);
    else activate_f16((const float16_t *)x, N, C, v0, len, T, act, e, scale, mx);
}

/* Channels-last tile [v0, v0 + len) of sample b transposed into C x T float rows (the logits). */
#define DEFINE_STAGE_ROWS(NAME, XT, LOAD)                                                          \
    static void NAME(const XT *restrict src, int64_t b, int64_t C, int64_t N, int64_t v0, int len, \
                     int T, float *restrict rows) {                                                \
        for (int v = 0; v < len; ++v) {                                                            \
            const XT *restrict voxel = src + (b * N + v0 + v) * C;                                 \
            for (int64_t c = 0; c < C; ++c) rows[c * T + v] = LOAD(voxel[c]);                      \
        }                                                                                          \
    }

DEFINE_STAGE_ROWS(stage_rows_f32, float, LOAD_F32)
DEFINE_STAGE_ROWS(stage_rows_bf16, uint16_t, LOAD_BF16)
DEFINE_STAGE_ROWS(stage_rows_f16, float16_t, LOAD_F16)
#define LOAD_U8(v) ((float)(v))
DEFINE_STAGE_ROWS(stage_rows_u8, uint8_t, LOAD_U8)

/* C x T float rows written back into a channels-last tile (the gradient), in the output dtype. */
#define DEFINE_UNSTAGE_ROWS(NAME, OT, STORE)                                                       \
    static void NAME(OT *restrict dst, int64_t b, int64_t C, int64_t N, int64_t v0, int len, int T, \
                     const float *restrict rows) {                                                 \
        for (int v = 0; v < len; ++v) {                                                            \
            OT *restrict voxel = dst + (b * N + v0 + v) * C;                                       \
            for (int64_t c = 0; c < C; ++c) voxel[c] = STORE(rows[c * T + v]);                     \
        }                                                                                          \
    }

DEFINE_UNSTAGE_ROWS(unstage_rows_f32, float, STORE_F32)
DEFINE_UNSTAGE_ROWS(unstage_rows_bf16, uint16_t, STORE_BF16)
DEFINE_UNSTAGE_ROWS(unstage_rows_f16, float16_t, STORE_F16)

/* Class index of each voxel, -1 where it matches no class (out of 0..C-1: ignore_index, junk). */
#define INT_LABEL_LOOP(TT)                                                              \
    {                                                                                   \
        const TT *src = (const TT *)t + off;                                            \
        for (int v = 0; v < len; ++v)                                                   \
            lab[v] = (uint64_t)(int64_t)src[v] < (uint64_t)C ? (int32_t)src[v] : -1;    \
    }

static void labels_tile(const void *t, int ttype, int64_t off, int len, int64_t C, int32_t *lab) {
    if (ttype == T_LABEL_U8) INT_LABEL_LOOP(uint8_t)
    else if (ttype == T_LABEL_I32) INT_LABEL_LOOP(int32_t)
    else if (ttype == T_LABEL_I64) INT_LABEL_LOOP(int64_t)
    else if (ttype == T_LABEL_I16) INT_LABEL_LOOP(int16_t)
    else if (ttype == T_LABEL_I8) INT_LABEL_LOOP(int8_t)
    else {
        /* float labels are rounded to the nearest class (halves up), as every backend does: a label stored
         * one float step off an integer (1.0000001) is still its class */
        const float *src = (const float *)t + off, top = (float)C;
        for (int v = 0; v < len; ++v) {
            float y = floorf(src[v] + 0.5f);
            lab[v] = y >= 0.0f && y < top ? (int32_t)y : -1; /* NaN fails both tests */
        }
    }
}

/* Voxel weights m (0 or 1); without a mask, 1 everywhere. */
static void mask_tile(const uint8_t *mask, int64_t off, int len, float *mk) {
    if (mask == NULL)
        for (int v = 0; v < len; ++v) mk[v] = 1.0f;
    else
        for (int v = 0; v < len; ++v) mk[v] = mask[off + v] ? 1.0f : 0.0f;
}

/* Tile length: about 4096 values per C x T buffer (16 KiB, so it stays in L1 with the input tile),
 * but at least 128 voxels: with many classes (C = 105) shorter tiles spend their time on per-tile and
 * per-class overhead; 128-voxel tiles (L2-resident) measured about 1.8x faster than 32-voxel ones. */
static int tile_length(int64_t C) {
    int64_t t = 4096 / C;
    t = t < 128 ? 128 : (t > 1024 ? 1024 : t);
    return (int)(t & ~(int64_t)15);
}

typedef struct {
    float *e, *xs, *gs, *d, *scale, *mx, *mk, *dot, *lse;
    float *expmx; /* exp(max) per voxel where has_u: u = e * expmx is exp(x) (softmax beside a sigmoid term) */
    int has_u;
    int32_t *lab, *wlab; /* target labels and map labels of the tile */
    const float *w;      /* dense map rows of the tile: w[c * N + v] */
    const float *g;  /* dense target rows of the tile: g[c * g_row + v] */
    const float *lx; /* float logits of the tile (voxel term only): lx[c * lx_row + v] */
    int64_t g_row, lx_row;
    int T;
} Scratch;

/* e: probabilities; xs, gs, d: staging of logits, target and gradient (C x T each); per voxel:
 * softmax scale and max, mask, softmax dot product, log-sum-exp, exp of the max. */
static int scratch_alloc(Scratch *s, int64_t C) {
    s->T = tile_length(C);
    const size_t tile = (size_t)C * s->T;
    s->e = malloc(sizeof(float) * (4 * tile + 6 * (size_t)s->T) + 2 * sizeof(int32_t) * s->T);
    if (s->e == NULL) return -1;
    s->xs = s->e + tile;
    s->gs = s->xs + tile;
    s->d = s->gs + tile;
    s->scale = s->d + tile;
    s->mx = s->scale + s->T;
    s->mk = s->mx + s->T;
    s->dot = s->mk + s->T;
    s->lse = s->dot + s->T;
    s->expmx = s->lse + s->T;
    s->lab = (int32_t *)(s->expmx + s->T);
    s->wlab = s->lab + s->T;
    s->w = NULL;
    return 0;
}

/* A sigmoid term beside a softmax Dice needs exp(x) per element; the softmax already has
 * exp(x - max), so exp(x) = exp(x - max) exp(max) costs one exp per voxel instead of one per element.
 * Only where every max of the tile is at most U_MAX_LOGIT: there exp(max) stays finite, and where
 * exp(x - max) is clamped (x - max < -87) the product errs by at most exp(U_MAX_LOGIT - 87) < 1e-20
 * absolutely; a tile with a larger logit keeps the per-element exp. A NaN max gives a NaN u. */
#define U_MAX_LOGIT 40.0f

static void sigmoid_from_softmax(Scratch *s, int len) {
    float top = -INFINITY;
    for (int v = 0; v < len; ++v) top = s->mx[v] > top ? s->mx[v] : top;
    if (!(top <= U_MAX_LOGIT)) return;
    for (int v = 0; v < len; ++v) s->expmx[v] = exp_f32(s->mx[v]);
    s->has_u = 1;
}

/* No structure map (wtype); otherwise wtype is T_DENSE_F32 or a label code. */
enum { W_NONE = -1 };

/* Tile setup shared by both passes: activation, mask and labels or target rows of [v0, v0 + len)
 * of sample b; with a voxel term also float logit rows and (softmax) the log-sum-exp per voxel; with a
 * map its labels or rows. */
static void load_tile(Scratch *s, const void *x, int xtype, const void *t, int ttype, int64_t t_bstride,
                      const uint8_t *mask, const void *wmap, int wtype, int64_t w_bstride, int layout, int64_t b,
                      int64_t C, int64_t N, int64_t v0, int len, int act, int term) {
    const int T = s->T;
    if (layout & LAYOUT_X_CHANNELS_LAST) {
        if (xtype == X_F32) stage_rows_f32((const float *)x, b, C, N, v0, len, T, s->xs);
        else if (xtype == X_BF16) stage_rows_bf16((const uint16_t *)x, b, C, N, v0, len, T, s->xs);
        else stage_rows_f16((const float16_t *)x, b, C, N, v0, len, T, s->xs);
        activate_f32(s->xs, T, C, 0, len, T, act, s->e, s->scale, s->mx);
        s->lx = s->xs;
        s->lx_row = T;
    } else {
        const size_t xsize = xtype == X_F32 ? 4 : 2;
        const char *xb = (const char *)x + (size_t)(b * C * N) * xsize;
        activate(xb, xtype, N, C, v0, len, T, act, s->e, s->scale, s->mx);
        if (term && xtype == X_F32) {
            s->lx = (const float *)xb + v0;
            s->lx_row = N;
        } else if (term) { /* half logits: float rows once per tile, read by every term loop */
            for (int64_t c = 0; c < C; ++c) {
                float *restrict row = s->xs + c * T;
                if (xtype == X_BF16) {
                    const uint16_t *restrict src = (const uint16_t *)xb + c * N + v0;
                    for (int v = 0; v < len; ++v) row[v] = bf16_to_f32(src[v]);
                } else {
                    const float16_t *restrict src = (const float16_t *)xb + c * N + v0;
                    for (int v = 0; v < len; ++v) row[v] = LOAD_F16(src[v]);
                }
            }
            s->lx = s->xs;
            s->lx_row = T;
        }
    }
    if (term == OPT_TERM_SOFTMAX) /* log sum_j exp(x_j) = max + log(1 / scale) */
        for (int v = 0; v < len; ++v) s->lse[v] = s->mx[v] - log_f32(s->scale[v]);
    s->has_u = 0;
    if (term == OPT_TERM_SIGMOID && act == ACT_SOFTMAX) sigmoid_from_softmax(s, len);
    mask_tile(mask == NULL ? NULL : mask + b * N, v0, len, s->mk);
    if (!IS_DENSE(ttype)) {
        labels_tile(t, ttype, b * t_bstride + v0, len, C, s->lab);
    } else if (ttype == T_DENSE_U8) {
        if (layout & LAYOUT_T_CHANNELS_LAST) {
            stage_rows_u8((const uint8_t *)t, b, C, N, v0, len, T, s->gs);
        } else {
            const uint8_t *src = (const uint8_t *)t + b * t_bstride + v0;
            for (int64_t c = 0; c < C; ++c)
                for (int v = 0; v < len; ++v) s->gs[c * T + v] = (float)src[c * N + v];
        }
        s->g = s->gs;
        s->g_row = T;
    } else if (layout & LAYOUT_T_CHANNELS_LAST) {
        stage_rows_f32((const float *)t, b, C, N, v0, len, T, s->gs);
        s->g = s->gs;
        s->g_row = T;
    } else {
        s->g = (const float *)t + b * t_bstride + v0;
        s->g_row = N;
    }
    if (wtype == T_DENSE_F32) s->w = (const float *)wmap + b * w_bstride + v0;
    else if (wtype != W_NONE) labels_tile(wmap, wtype, b * w_bstride + v0, len, C, s->wlab);
}

/* Target value of class cls at voxel v: from the label map or the dense rows gc. */
#define LABEL_G (lab[v] == cls ? 1.0f : 0.0f)
#define DENSE_G (gc[v])

/* The voxel term's element l at voxel v of class row xc (see contract.py): softmax
 * (1 - p)^gamma * (lse - x); sigmoid s^gamma * (softplus(x) - x g), s = sigmoid(-x (2g - 1)). */
#define SOFTMAX_ELEMENT(G) (lse[v] - xc[v])
#define SOFTMAX_FOCAL_ELEMENT(G) (exp_f32(gamma * log_f32(1.0f - ec[v] * scale[v])) * (lse[v] - xc[v]))
/* q^n for a whole n in 0..7 from its bits, as arithmetic: factor k is b_k q^k + (1 - b_k) with b_k in {0, 1}
 * (exact either way). No branch and no inner loop, so the voxel loop around it vectorizes (with a loop over n,
 * or selects on n, gcc unswitched it into scalar copies). */
typedef struct {
    float b1, c1, b2, c2, b4, c4;
} WholePower;

static inline WholePower whole_power(int n) {
    WholePower w = {(float)(n & 1), (float)!(n & 1), (float)((n >> 1) & 1), (float)!((n >> 1) & 1),
                    (float)((n >> 2) & 1), (float)!((n >> 2) & 1)};
    return w;
}

static inline float ipow_f32(float q, WholePower w) {
    float q2 = q * q, q4 = q2 * q2;
    return (w.b1 * q + w.c1) * (w.b2 * q2 + w.c2) * (w.b4 * q4 + w.c4);
}

/* gamma as a whole exponent 1..7 (0 when it is not one): the focal terms then multiply instead of exp(gamma log q). */
static inline int whole_gamma(float gamma) {
    return gamma >= 1.0f && gamma <= 7.0f && gamma == (float)(int)gamma ? (int)gamma : 0;
}

/* A whole gamma (the default 2) as products: (1 - p)^n without exp and log. */
#define SOFTMAX_FOCAL_INT_ELEMENT(G) (ipow_f32(1.0f - ec[v] * scale[v], power) * (lse[v] - xc[v]))
#define SIGMOID_ELEMENT(G) (softplus_f32(xc[v]) - xc[v] * (G))
#define SIGMOID_FOCAL_ELEMENT(G) \
    (exp_f32(-gamma * softplus_f32(xc[v] * (2.0f * (G) - 1.0f))) * (softplus_f32(xc[v]) - xc[v] * (G)))

/* Hard targets (label maps, g in {0, 1}): one exp and one log per element. e = exp(-|x|),
 * softplus(x) = max(x, 0) + log(1 + e), sigmoid(x) from e, s = 1 - p_t = sigmoid(x) + g (1 - 2 sigmoid(x)),
 * s^gamma = exp(-gamma softplus(x (2g - 1))) with softplus(x (2g - 1)) = softplus(x) - x (1 - g). */
static inline float sigmoid_focal_hard_element(float x, float g, float gamma) {
    float ax = x < 0.0f ? -x : x, e = exp_f32(-ax);
    float sp = (x > 0.0f ? x : 0.0f) + log_f32(1.0f + e);
    return exp_f32(-gamma * (sp - x * (1.0f - g))) * (sp - x * g);
}

static inline float sigmoid_focal_hard_share(float x, float g, float gamma) {
    float ax = x < 0.0f ? -x : x, e = exp_f32(-ax), r = 1.0f / (1.0f + e);
    float sp = (x > 0.0f ? x : 0.0f) + log_f32(1.0f + e);
    float sig = x >= 0.0f ? r : e * r, s = sig + g * (1.0f - 2.0f * sig);
    float s_gamma = exp_f32(-gamma * (sp - x * (1.0f - g)));
    return s_gamma * ((sig - g) - gamma * (2.0f * g - 1.0f) * (1.0f - s) * (sp - x * g));
}

#define SIGMOID_FOCAL_HARD_ELEMENT(G) sigmoid_focal_hard_element(xc[v], (G), gamma)

/* With a whole gamma n, s^n as products of s = sigmoid(x (1 - 2g)) (= 1 - p_t), which for a hard target
 * comes from the same e = exp(-|x|) as softplus(x): one exp, one log and one division per element. */
static inline float sigmoid_focal_hard_int_element(float x, float g, WholePower power) {
    float ax = x < 0.0f ? -x : x, e = exp_f32(-ax), r = 1.0f / (1.0f + e);
    float sp = (x > 0.0f ? x : 0.0f) + log_f32(1.0f + e);
    float s = x * (1.0f - 2.0f * g) >= 0.0f ? r : e * r;
    return ipow_f32(s, power) * (sp - x * g);
}

/* Soft targets: s = sigmoid(x (1 - 2g)) from its own exp. */
static inline float sigmoid_focal_int_element(float x, float g, WholePower power) {
    float y = x * (1.0f - 2.0f * g), ay = y < 0.0f ? -y : y, e = exp_f32(-ay), r = 1.0f / (1.0f + e);
    return ipow_f32(y >= 0.0f ? r : e * r, power) * (softplus_f32(x) - x * g);
}

#define SIGMOID_FOCAL_HARD_INT_ELEMENT(G) sigmoid_focal_hard_int_element(xc[v], (G), power)
#define SIGMOID_FOCAL_INT_ELEMENT(G) sigmoid_focal_int_element(xc[v], (G), power)

/* The sigmoid term from u = exp(x) (see sigmoid_from_softmax): softplus(x) = log(1 + u), sigmoid(x) = u r and
 * sigmoid(-x) = r with r = 1 / (1 + u): one log and one division per element, no exp. Hard targets for the
 * focal forms (s = 1 - p_t is r where g = 1, u r where g = 0); BCE takes any target. */
#define U_ (ec[v] * expmx[v])
static inline float sigmoid_focal_hard_u_element(float u, float x, float g, float gamma) {
    float sp = log_f32(1.0f + u);
    return exp_f32(-gamma * (sp - x * (1.0f - g))) * (sp - x * g);
}

static inline float sigmoid_focal_hard_int_u_element(float u, float x, float g, WholePower power) {
    float r = 1.0f / (1.0f + u), sp = log_f32(1.0f + u);
    return ipow_f32(g > 0.5f ? r : u * r, power) * (sp - x * g);
}

/* gamma = 2, the default, as one product: ipow_f32's arithmetic bit selection costs six operations more. */
static inline float sigmoid_focal_hard_square_u_element(float u, float x, float g) {
    float r = 1.0f / (1.0f + u), sp = log_f32(1.0f + u), s = g > 0.5f ? r : u * r;
    return s * s * (sp - x * g);
}

#define SIGMOID_U_ELEMENT(G) (log_f32(1.0f + U_) - xc[v] * (G))
#define SIGMOID_FOCAL_HARD_U_ELEMENT(G) sigmoid_focal_hard_u_element(U_, xc[v], (G), gamma)
#define SIGMOID_FOCAL_HARD_INT_U_ELEMENT(G) sigmoid_focal_hard_int_u_element(U_, xc[v], (G), power)
#define SIGMOID_FOCAL_HARD_SQUARE_U_ELEMENT(G) sigmoid_focal_hard_square_u_element(U_, xc[v], (G))

#define TERM_SUMS_LOOP(G, ELEMENT)                                                                 \
    _Pragma("omp simd reduction(+ : sf, sq)")                                                     \
    for (int v = 0; v < len; ++v) {                                                                \
        float g = (G), l = ELEMENT(g) * mk[v];                                                     \
        sf += g * l;                                                                               \
        sq += (1.0f - g) * l;                                                                      \
    }

#define TERM_SUMS(G, SIGMOID_FOCAL, SIGMOID_FOCAL_INT)                                             \
    if (term == OPT_TERM_SOFTMAX && gamma == 0.0f) TERM_SUMS_LOOP(G, SOFTMAX_ELEMENT)              \
    else if (term == OPT_TERM_SOFTMAX && gamma_int) TERM_SUMS_LOOP(G, SOFTMAX_FOCAL_INT_ELEMENT)    \
    else if (term == OPT_TERM_SOFTMAX) TERM_SUMS_LOOP(G, SOFTMAX_FOCAL_ELEMENT)                    \
    else if (gamma == 0.0f) TERM_SUMS_LOOP(G, SIGMOID_ELEMENT)                                     \
    else if (gamma_int) TERM_SUMS_LOOP(G, SIGMOID_FOCAL_INT)                                       \
    else TERM_SUMS_LOOP(G, SIGMOID_FOCAL)

#define TERM_SUMS_U(G)                                                                             \
    if (gamma == 0.0f) TERM_SUMS_LOOP(G, SIGMOID_U_ELEMENT)                                        \
    else if (gamma_int == 2) TERM_SUMS_LOOP(G, SIGMOID_FOCAL_HARD_SQUARE_U_ELEMENT)                \
    else if (gamma_int) TERM_SUMS_LOOP(G, SIGMOID_FOCAL_HARD_INT_U_ELEMENT)                        \
    else TERM_SUMS_LOOP(G, SIGMOID_FOCAL_HARD_U_ELEMENT)

/* stats (8 x B x C, double, accumulated into): I = sum m p g (soft: sum m min(p, g)), P = sum m p^k,
 * G = sum m g^k, V = sum m g, with k = 2 when squared else 1; with a voxel term F = sum m g l and
 * Q = sum m (1 - g) l; with a map W = sum m a p and S = sum m a. */
int mgdl_forward(const void *x, int xtype, const void *t, int ttype, const uint8_t *mask, int64_t B, int64_t C,
                 int64_t N, int64_t n0, int64_t n1, int act, int options, float gamma, int layout, int64_t t_bstride,
                 const void *wmap, int wtype, int64_t w_bstride, double *stats) {
    const int squared = options & OPT_SQUARED, soft = (options & OPT_SOFT) != 0 && IS_DENSE(ttype);
    const int term = options & (OPT_TERM_SOFTMAX | OPT_TERM_SIGMOID), gamma_int = whole_gamma(gamma);
    const WholePower power = whole_power(gamma_int);
    Scratch s;
    if (scratch_alloc(&s, C) != 0) return -1;
    const float *restrict scale = s.scale, *restrict mk = s.mk, *restrict lse = s.lse, *restrict expmx = s.expmx;
    const int32_t *restrict lab = s.lab;
    /* p^k = p * kp + k1: arithmetic instead of a branch, so both variants vectorize alike */
    const float kp = squared ? 1.0f : 0.0f, k1 = 1.0f - kp;
    for (int64_t b = 0; b < B; ++b) {
        double *I = stats + b * C, *P = I + B * C, *G = P + B * C, *V = G + B * C, *Fs = V + B * C, *Qs = Fs + B * C;
        double *Ws = Qs + B * C, *Ss = Ws + B * C;
        for (int64_t v0 = n0; v0 < n1; v0 += s.T) {
            const int len = (int)(n1 - v0 < s.T ? n1 - v0 : s.T);
            load_tile(&s, x, xtype, t, ttype, t_bstride, mask, wmap, wtype, w_bstride, layout, b, C, N, v0, len, act,
                      term);
            for (int64_t c = 0; c < C; ++c) {
                const float *restrict ec = s.e + c * s.T;
                const float *restrict gc = IS_DENSE(ttype) ? s.g + c * s.g_row : NULL;
                const int32_t cls = (int32_t)c;
                float si = 0.0f, sp = 0.0f, sg = 0.0f, sv = 0.0f;
                float sf = 0.0f, sq = 0.0f;
                if (gc == NULL && term == OPT_TERM_SOFTMAX && gamma == 0.0f) { /* Dice + CE, one loop */
                    const float *restrict xc = s.lx + c * s.lx_row;
#pragma omp simd reduction(+ : si, sp, sv, sf, sq)
                    for (int v = 0; v < len; ++v) {
                        float p = ec[v] * scale[v];
                        float h = lab[v] == cls ? mk[v] : 0.0f;
                        float nll = lse[v] - xc[v];
                        si += p * h;
                        sp += p * mk[v] * (p * kp + k1);
                        sv += h;
                        sf += h * nll;
                        sq += (mk[v] - h) * nll;
                    }
                    sg = sv;
                } else if (gc == NULL) {
#pragma omp simd reduction(+ : si, sp, sv)
                    for (int v = 0; v < len; ++v) {
                        float p = ec[v] * scale[v];
                        float h = lab[v] == cls ? mk[v] : 0.0f;
                        si += p * h;
                        sp += p * mk[v] * (p * kp + k1);
                        sv += h;
                    }
                    sg = sv;
                } else if (soft) {
#pragma omp simd reduction(+ : si, sp, sg, sv)
                    for (int v = 0; v < len; ++v) {
                        float p = ec[v] * scale[v];
                        float gm = gc[v] * mk[v];
                        si += mk[v] * (p < gc[v] ? p : gc[v]);
                        sp += p * mk[v] * (p * kp + k1);
                        sg += gm * (gc[v] * kp + k1);
                        sv += gm;
                    }
                } else {
#pragma omp simd reduction(+ : si, sp, sg, sv)
                    for (int v = 0; v < len; ++v) {
                        float p = ec[v] * scale[v];
                        float gm = gc[v] * mk[v];
                        float pm = p * mk[v];
                        si += pm * gc[v];
                        sp += pm * (p * kp + k1);
                        sg += gm * (gc[v] * kp + k1);
                        sv += gm;
                    }
                }
                I[c] += si;
                P[c] += sp;
                G[c] += sg;
                V[c] += sv;
                if (term && !(gc == NULL && term == OPT_TERM_SOFTMAX && gamma == 0.0f)) {
                    const float *restrict xc = s.lx + c * s.lx_row;
                    if (s.has_u && gc == NULL) TERM_SUMS_U(LABEL_G)
                    else if (s.has_u && gamma == 0.0f) TERM_SUMS_LOOP(DENSE_G, SIGMOID_U_ELEMENT)
                    else if (gc == NULL) TERM_SUMS(LABEL_G, SIGMOID_FOCAL_HARD_ELEMENT, SIGMOID_FOCAL_HARD_INT_ELEMENT)
                    else TERM_SUMS(DENSE_G, SIGMOID_FOCAL_ELEMENT, SIGMOID_FOCAL_INT_ELEMENT)
                }
                Fs[c] += sf;
                Qs[c] += sq;
                if (wtype != W_NONE) {
                    float sw = 0.0f, sa = 0.0f;
                    if (wtype == T_DENSE_F32) {
                        const float *restrict wc = s.w + c * N;
#pragma omp simd reduction(+ : sw, sa)
                        for (int v = 0; v < len; ++v) {
                            float a = wc[v] * mk[v];
                            sw += a * ec[v] * scale[v];
                            sa += a;
                        }
                    } else {
                        const int32_t *restrict wlab = s.wlab;
#pragma omp simd reduction(+ : sw, sa)
                        for (int v = 0; v < len; ++v) {
                            float a = wlab[v] == cls ? mk[v] : 0.0f;
                            sw += a * ec[v] * scale[v];
                            sa += a;
                        }
                    }
                    Ws[c] += sw;
                    Ss[c] += sa;
                }
            }
        }
    }
    free(s.e);
    return 0;
}

/* Dice part of dL/dp of class c at voxel v: m (a dI/dp + beta k p^(k-1)), with k p^(k-1) =
 * p * kp2 + k1 and dI/dp = g (product), or for the soft intersection min(p, g): 1 if p < g, 1/2 at
 * a tie, else 0. */
#define SOFT_DI_DP(G) (p < gc[v] ? 1.0f : (p == gc[v] ? 0.5f : 0.0f))
#define DICE_DU(DI) ((a * (DI) + beta * (p * kp2 + k1)) * mk[v])
/* Voxel-term weight w = m (f g + q (1 - g)) and its gradient shares (reference.py's formulas). */
#define TERM_W(G) (mk[v] * (f * (G) + q * (1.0f - (G))))
#define SOFTMAX_TERM_E(G) (-TERM_W(G))
#define SOFTMAX_FOCAL_TERM_E(G) softmax_focal_share(TERM_W(G), p, xc[v] - lse[v], gamma)
#define SOFTMAX_FOCAL_INT_TERM_E(G) softmax_focal_int_share(TERM_W(G), p, xc[v] - lse[v], gamma_int, power_less_one)
#define SIGMOID_TERM_D(G) (TERM_W(G) * (sigmoid_f32(xc[v]) - (G)))
#define SIGMOID_FOCAL_TERM_D(G) (TERM_W(G) * sigmoid_focal_share(xc[v], (G), gamma))
#define SIGMOID_FOCAL_HARD_TERM_D(G) (TERM_W(G) * sigmoid_focal_hard_share(xc[v], (G), gamma))
#define SIGMOID_FOCAL_INT_TERM_D(G) (TERM_W(G) * sigmoid_focal_int_share(xc[v], (G), gamma_int, power))
#define SIGMOID_FOCAL_HARD_INT_TERM_D(G) (TERM_W(G) * sigmoid_focal_hard_int_share(xc[v], (G), gamma_int, power))
#define NO_TERM(G) 0.0f

static inline float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

/* w (1 - p)^gamma (gamma p t - 1), t = log(p) / (1 - p) (-1 where p rounds to 1). */
static inline float softmax_focal_share(float w, float p, float log_p, float gamma) {
    float one_minus = 1.0f - p;
    float t = one_minus > 0.0f ? log_p / (one_minus > 0.0f ? one_minus : 1.0f) : -1.0f;
    return w * exp_f32(gamma * log_f32(one_minus)) * (gamma * p * t - 1.0f);
}

/* The same for a whole gamma n: w (1 - p)^(n - 1) (n p log(p) - (1 - p)), no exp, log or division
 * (power_less_one: the bits of n - 1). */
static inline float softmax_focal_int_share(float w, float p, float log_p, int n, WholePower power_less_one) {
    float one_minus = 1.0f - p;
    return w * ipow_f32(one_minus, power_less_one) * ((float)n * p * log_p - one_minus);
}

/* d l / d x of the sigmoid focal element: s^gamma (sigmoid(x) - g) - gamma (2g - 1) s^gamma (1 - s) bce. */
static inline float sigmoid_focal_share(float x, float g, float gamma) {
    float sign = 2.0f * g - 1.0f, y = x * sign;
    float s_gamma = exp_f32(-gamma * softplus_f32(y)), s = 1.0f - sigmoid_f32(y);
    float bce = softplus_f32(x) - x * g;
    return s_gamma * (sigmoid_f32(x) - g) - gamma * sign * s_gamma * (1.0f - s) * bce;
}

/* The two shares above with a whole gamma n: s^n as products of s = sigmoid(x (1 - 2g)); 1 - s = sigmoid(-x (1 - 2g)). */
static inline float sigmoid_focal_int_share(float x, float g, int n, WholePower power) {
    float sign = 2.0f * g - 1.0f, y = x * sign, ay = y < 0.0f ? -y : y, e = exp_f32(-ay), r = 1.0f / (1.0f + e);
    float one_minus_s = y >= 0.0f ? r : e * r, s = y >= 0.0f ? e * r : r;
    float bce = softplus_f32(x) - x * g;
    return ipow_f32(s, power) * ((sigmoid_f32(x) - g) - (float)n * sign * one_minus_s * bce);
}

static inline float sigmoid_focal_hard_int_share(float x, float g, int n, WholePower power) {
    float ax = x < 0.0f ? -x : x, e = exp_f32(-ax), r = 1.0f / (1.0f + e);
    float sp = (x > 0.0f ? x : 0.0f) + log_f32(1.0f + e);
    float sig = x >= 0.0f ? r : e * r, sign = 2.0f * g - 1.0f;
    float s = x * sign <= 0.0f ? r : e * r, one_minus_s = x * sign <= 0.0f ? e * r : r;
    return ipow_f32(s, power) * ((sig - g) - (float)n * sign * one_minus_s * (sp - x * g));
}

/* The hard shares above from u = exp(x) (see sigmoid_from_softmax): no exp for a whole gamma. */
static inline float sigmoid_focal_hard_u_share(float u, float x, float g, float gamma) {
    float r = 1.0f / (1.0f + u), sp = log_f32(1.0f + u), sig = u * r, s = g > 0.5f ? r : sig;
    float s_gamma = exp_f32(-gamma * (sp - x * (1.0f - g)));
    return s_gamma * ((sig - g) - gamma * (2.0f * g - 1.0f) * (1.0f - s) * (sp - x * g));
}

static inline float sigmoid_focal_hard_int_u_share(float u, float x, float g, int n, WholePower power) {
    float r = 1.0f / (1.0f + u), sp = log_f32(1.0f + u), sig = u * r;
    float s = g > 0.5f ? r : sig, one_minus_s = g > 0.5f ? sig : r;
    return ipow_f32(s, power) * ((sig - g) - (float)n * (2.0f * g - 1.0f) * one_minus_s * (sp - x * g));
}

#define SIGMOID_U_TERM_D(G) (TERM_W(G) * (U_ / (1.0f + U_) - (G)))
#define SIGMOID_FOCAL_HARD_U_TERM_D(G) (TERM_W(G) * sigmoid_focal_hard_u_share(U_, xc[v], (G), gamma))
static inline float sigmoid_focal_hard_square_u_share(float u, float x, float g) {
    float r = 1.0f / (1.0f + u), sp = log_f32(1.0f + u), sig = u * r;
    float s = g > 0.5f ? r : sig, one_minus_s = g > 0.5f ? sig : r;
    return s * s * ((sig - g) - 2.0f * (2.0f * g - 1.0f) * one_minus_s * (sp - x * g));
}

#define SIGMOID_FOCAL_HARD_SQUARE_U_TERM_D(G) (TERM_W(G) * sigmoid_focal_hard_square_u_share(U_, xc[v], (G)))
#define SIGMOID_FOCAL_HARD_INT_U_TERM_D(G) (TERM_W(G) * sigmoid_focal_hard_int_u_share(U_, xc[v], (G), gamma_int, power))

/* Row d = e (softmax: p dL/dp plus the softmax term's share, summed into dot) or dL/dx (sigmoid,
 * none), one class; EXTRA is the map term's share of dL/dp, m dL/dW a (0 without a map). */
#define ROW_LOOP(DI, G, TERM_E, EXTRA)                                                             \
    _Pragma("omp simd")                                                                           \
    for (int v = 0; v < len; ++v) {                                                                \
        float p = ec[v] * scale[v];                                                                \
        float du = DICE_DU(DI) + (EXTRA);                                                          \
        float d = act == ACT_SOFTMAX ? p * du + TERM_E(G) : (act == ACT_SIGMOID ? du * p * (1.0f - p) : du); \
        dc[v] = d;                                                                                 \
        dot[v] += d;                                                                               \
    }

/* The tile's gradient rows into the output: softmax d - p sum_j d_j, else d; in dtype OT. */
#define DEFINE_STORE_ROWS(NAME, OT, STORE)                                                         \
    static void NAME(OT *restrict o, const float *restrict dc, const float *restrict ec,         \
                     const float *restrict scale, const float *restrict dot, int softmax, int len) { \
        if (softmax)                                                                               \
            for (int v = 0; v < len; ++v) o[v] = STORE(dc[v] - ec[v] * scale[v] * dot[v]);        \
        else                                                                                       \
            for (int v = 0; v < len; ++v) o[v] = STORE(dc[v]);                                     \
    }

DEFINE_STORE_ROWS(store_rows_f32, float, STORE_F32)
DEFINE_STORE_ROWS(store_rows_bf16, uint16_t, STORE_BF16)
DEFINE_STORE_ROWS(store_rows_f16, float16_t, STORE_F16)

#define ROW_FOR_TERM(DI, G, EXTRA)                                                                 \
    if (term != OPT_TERM_SOFTMAX) ROW_LOOP(DI, G, NO_TERM, EXTRA)                                  \
    else if (gamma == 0.0f) ROW_LOOP(DI, G, SOFTMAX_TERM_E, EXTRA)                                 \
    else if (gamma_int) ROW_LOOP(DI, G, SOFTMAX_FOCAL_INT_TERM_E, EXTRA)                           \
    else ROW_LOOP(DI, G, SOFTMAX_FOCAL_TERM_E, EXTRA)

#define LABEL_MAP_A (wlab[v] == cls ? gwc * mk[v] : 0.0f)
#define DENSE_MAP_A (gwc * wc[v] * mk[v])

#define ROW_FOR_TARGET(DI, G)                                                                      \
    if (wtype == W_NONE) ROW_FOR_TERM(DI, G, 0.0f)                                                 \
    else if (wtype == T_DENSE_F32) ROW_FOR_TERM(DI, G, DENSE_MAP_A)                                \
    else ROW_FOR_TERM(DI, G, LABEL_MAP_A)

#define SIGMOID_TERM_LOOP(G, SHARE)                                                                \
    _Pragma("omp simd")                                                                           \
    for (int v = 0; v < len; ++v) dc[v] += SHARE(G);

/* out = dL/dx for [n0, n1) from grad = (dL/dI, dL/dP, dL/dF, dL/dQ, dL/dW) (5 x B x C, float32). Per
 * tile: the map term's share of dL/dp (with a map), rows d as above (and their sum over classes), the
 * sigmoid term's share, then one pass that applies the softmax chain d - p sum_j d_j and stores in the
 * output dtype and layout. */
int mgdl_backward(const void *x, int xtype, const void *t, int ttype, const uint8_t *mask, int64_t B, int64_t C,
                  int64_t N, int64_t n0, int64_t n1, int act, int options, float gamma, int layout, int64_t t_bstride,
                  const void *wmap, int wtype, int64_t w_bstride, const float *grad, void *out) {
    const int squared = options & OPT_SQUARED, soft = (options & OPT_SOFT) != 0 && IS_DENSE(ttype);
    const int term = options & (OPT_TERM_SOFTMAX | OPT_TERM_SIGMOID), gamma_int = whole_gamma(gamma);
    const WholePower power = whole_power(gamma_int), power_less_one = whole_power(gamma_int - 1);
    const float *ga = grad, *gb = grad + B * C, *gf = gb + B * C, *gq = gf + B * C, *gw = gq + B * C;
    Scratch s;
    if (scratch_alloc(&s, C) != 0) return -1;
    const float *restrict scale = s.scale, *restrict mk = s.mk, *restrict lse = s.lse, *restrict expmx = s.expmx;
    const int32_t *restrict lab = s.lab;
    float *restrict dot = s.dot;
    const float kp2 = squared ? 2.0f : 0.0f, k1 = squared ? 0.0f : 1.0f;
    const int staged = layout & LAYOUT_X_CHANNELS_LAST;
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t v0 = n0; v0 < n1; v0 += s.T) {
            const int len = (int)(n1 - v0 < s.T ? n1 - v0 : s.T);
            load_tile(&s, x, xtype, t, ttype, t_bstride, mask, wmap, wtype, w_bstride, layout, b, C, N, v0, len, act,
                      term);
            for (int v = 0; v < len; ++v) dot[v] = 0.0f;
            for (int64_t c = 0; c < C; ++c) {
                const float *restrict ec = s.e + c * s.T;
                const float *restrict gc = IS_DENSE(ttype) ? s.g + c * s.g_row : NULL;
                const float *restrict xc = term ? s.lx + c * s.lx_row : NULL;
                float *restrict dc = s.d + c * s.T;
                const int32_t cls = (int32_t)c;
                const float a = ga[b * C + c], beta = gb[b * C + c], f = gf[b * C + c], q = gq[b * C + c];
                const float gwc = wtype == W_NONE ? 0.0f : gw[b * C + c];
                const float *restrict wc = wtype == T_DENSE_F32 ? s.w + c * N : NULL;
                const int32_t *restrict wlab = s.wlab;
                if (gc == NULL) ROW_FOR_TARGET(LABEL_G, LABEL_G)
                else if (soft) ROW_FOR_TARGET(SOFT_DI_DP(DENSE_G), DENSE_G)
                else ROW_FOR_TARGET(DENSE_G, DENSE_G)
            }
            if (term == OPT_TERM_SIGMOID) /* after the Dice term's chain: not part of the softmax dot */
                for (int64_t c = 0; c < C; ++c) {
                    const float *restrict gc = IS_DENSE(ttype) ? s.g + c * s.g_row : NULL;
                    const float *restrict xc = s.lx + c * s.lx_row;
                    float *restrict dc = s.d + c * s.T;
                    const int32_t cls = (int32_t)c;
                    const float f = gf[b * C + c], q = gq[b * C + c];
                    const float *restrict ec = s.e + c * s.T;
                    if (s.has_u && gc == NULL && gamma == 0.0f) SIGMOID_TERM_LOOP(LABEL_G, SIGMOID_U_TERM_D)
                    else if (s.has_u && gc == NULL && gamma_int == 2) SIGMOID_TERM_LOOP(LABEL_G, SIGMOID_FOCAL_HARD_SQUARE_U_TERM_D)
                    else if (s.has_u && gc == NULL && gamma_int) SIGMOID_TERM_LOOP(LABEL_G, SIGMOID_FOCAL_HARD_INT_U_TERM_D)
                    else if (s.has_u && gc == NULL) SIGMOID_TERM_LOOP(LABEL_G, SIGMOID_FOCAL_HARD_U_TERM_D)
                    else if (s.has_u && gamma == 0.0f) SIGMOID_TERM_LOOP(DENSE_G, SIGMOID_U_TERM_D)
                    else if (gc == NULL && gamma == 0.0f) SIGMOID_TERM_LOOP(LABEL_G, SIGMOID_TERM_D)
                    else if (gc == NULL && gamma_int) SIGMOID_TERM_LOOP(LABEL_G, SIGMOID_FOCAL_HARD_INT_TERM_D)
                    else if (gc == NULL) SIGMOID_TERM_LOOP(LABEL_G, SIGMOID_FOCAL_HARD_TERM_D)
                    else if (gamma == 0.0f) SIGMOID_TERM_LOOP(DENSE_G, SIGMOID_TERM_D)
                    else if (gamma_int) SIGMOID_TERM_LOOP(DENSE_G, SIGMOID_FOCAL_INT_TERM_D)
                    else SIGMOID_TERM_LOOP(DENSE_G, SIGMOID_FOCAL_TERM_D)
                }
            const int softmax = act == ACT_SOFTMAX;
            for (int64_t c = 0; c < C; ++c) {
                const float *ec = s.e + c * s.T, *dc = s.d + c * s.T;
                const size_t at = (size_t)((b * C + c) * N + v0);
                if (staged) store_rows_f32(s.d + c * s.T, dc, ec, scale, dot, softmax, len); /* in place */
                else if (xtype == X_F32) store_rows_f32((float *)out + at, dc, ec, scale, dot, softmax, len);
                else if (xtype == X_BF16) store_rows_bf16((uint16_t *)out + at, dc, ec, scale, dot, softmax, len);
                else store_rows_f16((float16_t *)out + at, dc, ec, scale, dot, softmax, len);
            }
            if (staged) {
                if (xtype == X_F32) unstage_rows_f32((float *)out, b, C, N, v0, len, s.T, s.d);
                else if (xtype == X_BF16) unstage_rows_bf16((uint16_t *)out, b, C, N, v0, len, s.T, s.d);
                else unstage_rows_f16((float16_t *)out, b, C, N, v0, len, s.T, s.d);
            }
        }
    }
    free(s.e);
    return 0;
}

/* Advise the 2 MiB-aligned interior of [ptr, ptr + nbytes) onto transparent huge pages: first
 * touch then maps 512x fewer pages. Advice only; returns 0, or -1 where the system has no THP. */
int mgdl_prefer_huge_pages(void *ptr, int64_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t start = ((uintptr_t)ptr + huge - 1) & ~(huge - 1);
    uintptr_t end = ((uintptr_t)ptr + (uintptr_t)nbytes) & ~(huge - 1);
    if (end <= start) return 0;
    return madvise((void *)start, end - start, MADV_HUGEPAGE);
#else
    (void)ptr;
    (void)nbytes;
    return -1;
#endif
}
