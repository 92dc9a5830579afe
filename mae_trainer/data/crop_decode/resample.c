/* Resampling of a fractional box of an RGB image, separable, in float: area (what cv::resize(INTER_AREA)
 * does to a whole-pixel ROI) and bicubic (what PIL's Image.resize(size, BICUBIC, box=...) does to the box's
 * pixels, antialiased when shrinking).
 *
 * Why fractional boxes: a DCT-scaled decode (1/d) turns the crop box [x, x+w) into [x/d, (x+w)/d) scaled
 * pixels, which is rarely whole. Rounding the box to whole scaled pixels shifts and stretches the crop by up
 * to half a scaled pixel (d/2 source pixels) per edge, visibly so on fine texture; resampling the exact box
 * keeps the geometry of FFCV's full-resolution crop.
 *
 * Area: each output pixel is the mean of the source over its box (source pixel k covers [k, k+1)), computed
 * like OpenCV's area path: outputs differ from cv::resize's by at most 1, rarely. It is also about twice as
 * fast as OpenCV's general (non-integer factor) area path, so the decoder uses it for every downscale,
 * scaled decode or not.
 *
 * Bicubic: Keys' cubic convolution kernel with a = -0.5 (PIL's and torchvision's BICUBIC), centred on the
 * output pixel's centre mapped into the box; when shrinking by a factor s > 1 the kernel is stretched by s
 * (support 2s source pixels: a low-pass filter, like PIL's antialiasing), and weights are normalised to sum
 * 1. Only the source pixels the box touches are used — what torchvision's resized_crop sees after cropping —
 * so a crop decode (which decodes only those) gives the same result as a full decode.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RS_OK 0
#define RS_ERR_ARGS (-2)
#define RS_ERR_MEMORY (-4)

/* Taps of output pixel o: source pixels first[o] .. first[o]+count[o]-1 with weights
 * weight[o*stride + t] (normalised to sum 1) for the box [start + o*step, start + (o+1)*step). */
struct taps {
    int64_t *first, *count;
    float *weight;
    int64_t stride;
};

static int build_taps(struct taps *taps, double start, double length, int64_t n_source, int64_t n_out) {
    double step = length / (double)n_out;
    taps->stride = (int64_t)ceil(step) + 1; /* a box of length step touches at most ceil(step)+1 pixels */
    taps->first = malloc(sizeof(int64_t) * n_out);
    taps->count = malloc(sizeof(int64_t) * n_out);
    taps->weight = malloc(sizeof(float) * n_out * taps->stride);
    if (!taps->first || !taps->count || !taps->weight) return RS_ERR_MEMORY;
    for (int64_t o = 0; o < n_out; o++) {
        double a = start + step * o, b = start + step * (o + 1);
        int64_t lo = (int64_t)floor(a), hi = (int64_t)ceil(b); /* pixels [lo, hi) */
        if (lo < 0) lo = 0;
        if (hi > n_source) hi = n_source;
        if (lo > n_source - 1) lo = n_source - 1;
        if (hi <= lo) hi = lo + 1;
        if (hi - lo > taps->stride) hi = lo + taps->stride; /* only float noise can get here */
        double total = 0;
        float *w = taps->weight + o * taps->stride;
        for (int64_t k = lo; k < hi; k++) {
            double overlap = fmin(b, (double)(k + 1)) - fmax(a, (double)k);
            w[k - lo] = (float)(overlap > 0 ? overlap : 0);
            total += w[k - lo];
        }
        for (int64_t k = lo; k < hi; k++)
            w[k - lo] = total > 0 ? (float)(w[k - lo] / total) : 1.0f / (hi - lo);
        taps->first[o] = lo;
        taps->count[o] = hi - lo;
    }
    return RS_OK;
}

static void free_taps(struct taps *taps) {
    free(taps->first);
    free(taps->count);
    free(taps->weight);
}

/* Taps of Keys' bicubic (a = -0.5) for the box [start, start + length) mapped onto n_out pixels; only the
 * source pixels [floor(start), ceil(start + length)) that the box touches are used. */
static double keys_cubic(double t) {
    const double a = -0.5;
    t = fabs(t);
    if (t < 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
    if (t < 2) return (((t - 5) * t + 8) * t - 4) * a;
    return 0;
}

static int build_cubic_taps(struct taps *taps, double start, double length, int64_t n_source,
                            int64_t n_out) {
    double step = length / (double)n_out;
    double stretch = step > 1 ? step : 1; /* shrinking: widen the kernel (antialiasing) */
    double support = 2 * stretch;
    int64_t box_lo = (int64_t)floor(start), box_hi = (int64_t)ceil(start + length);
    if (box_lo < 0) box_lo = 0;
    if (box_hi > n_source) box_hi = n_source;
    if (box_hi <= box_lo) box_hi = box_lo + 1;
    taps->stride = (int64_t)ceil(2 * support) + 2;
    taps->first = malloc(sizeof(int64_t) * n_out);
    taps->count = malloc(sizeof(int64_t) * n_out);
    taps->weight = malloc(sizeof(float) * n_out * taps->stride);
    if (!taps->first || !taps->count || !taps->weight) return RS_ERR_MEMORY;
    for (int64_t o = 0; o < n_out; o++) {
        double centre = start + step * (o + 0.5);
        /* pixel k (centre k + 0.5) has a non-zero weight when |k + 0.5 - centre| < support */
        int64_t lo = (int64_t)ceil(centre - support - 0.5), hi = (int64_t)floor(centre + support - 0.5) + 1;
        if (lo < box_lo) lo = box_lo;
        if (hi > box_hi) hi = box_hi;
        if (lo > box_hi - 1) lo = box_hi - 1;
        if (hi <= lo) hi = lo + 1;
        if (hi - lo > taps->stride) hi = lo + taps->stride; /* only float noise can get here */
        double total = 0;
        for (int64_t k = lo; k < hi; k++) total += keys_cubic((k + 0.5 - centre) / stretch);
        float *w = taps->weight + o * taps->stride;
        for (int64_t k = lo; k < hi; k++)
            w[k - lo] = total != 0 ? (float)(keys_cubic((k + 0.5 - centre) / stretch) / total) : 1.0f / (hi - lo);
        taps->first[o] = lo;
        taps->count[o] = hi - lo;
    }
    return RS_OK;
}

/* The box (y, x, h, w) must lie inside the rows x cols image and be non-empty, as must the output. */
static int box_is_valid(int64_t rows, int64_t cols, double y, double x, double h, double w, int64_t out_h,
                        int64_t out_w) {
    const double slack = 1e-6; /* tolerate float rounding of box edges computed by the caller */
    return rows >= 1 && cols >= 1 && out_h >= 1 && out_w >= 1 && h > 0 && w > 0 && y >= -slack &&
           x >= -slack && y + h <= rows + slack && x + w <= cols + slack;
}

/* Check the box and build both directions' taps with build (to be freed, whatever the status). */
typedef int (*taps_builder)(struct taps *, double start, double length, int64_t n_source, int64_t n_out);

static int box_taps(taps_builder build, int64_t rows, int64_t cols, double y, double x, double h, double w,
                    int64_t out_h, int64_t out_w, struct taps *vertical, struct taps *horizontal) {
    if (!box_is_valid(rows, cols, y, x, h, w, out_h, out_w)) return RS_ERR_ARGS;
    int status = build(vertical, y, h, rows, out_h);
    return status == RS_OK ? build(horizontal, x, w, cols, out_w) : status;
}

/* Apply the vertical then the horizontal taps (the status of building them comes in) to the contiguous
 * rows x cols x 3 image src, writing the contiguous out_h x out_w x 3 image dst; frees the taps. */
static int resample(const uint8_t *src, int64_t cols, struct taps *vertical, struct taps *horizontal,
                    int status, uint8_t *dst, int64_t out_h, int64_t out_w) {
    /* Only the source columns [first_col, first_col + span) that the box touches are summed. */
    int64_t first_col = status == RS_OK ? horizontal->first[0] : 0, span = 1;
    for (int64_t c = 0; status == RS_OK && c < out_w; c++)
        if (horizontal->first[c] + horizontal->count[c] - first_col > span)
            span = horizontal->first[c] + horizontal->count[c] - first_col;
    float *line = status == RS_OK ? malloc(sizeof(float) * span * 3) : NULL; /* one row, not yet narrowed */
    if (!line) status = status == RS_OK ? RS_ERR_MEMORY : status;

    /* Vertical pass first: its inner loop runs along whole rows, which the compiler vectorises; the
     * horizontal pass (a few taps per pixel) then works on out_h rows only. */
    for (int64_t o = 0; status == RS_OK && o < out_h; o++) {
        const float *weights = vertical->weight + o * vertical->stride;
        for (int64_t k = 0; k < span * 3; k++) line[k] = 0;
        for (int64_t t = 0; t < vertical->count[o]; t++) {
            const uint8_t *row = src + ((vertical->first[o] + t) * cols + first_col) * 3;
            const float weight = weights[t];
            for (int64_t k = 0; k < span * 3; k++) line[k] += weight * row[k];
        }
        uint8_t *out = dst + o * out_w * 3;
        for (int64_t c = 0; c < out_w; c++) {
            const float *p = line + (horizontal->first[c] - first_col) * 3;
            const float *wc = horizontal->weight + c * horizontal->stride;
            float r = 0.5f, g = 0.5f, b = 0.5f; /* + 0.5: round to nearest when truncating below */
            for (int64_t t = 0; t < horizontal->count[c]; t++, p += 3) {
                r += wc[t] * p[0];
                g += wc[t] * p[1];
                b += wc[t] * p[2];
            }
            out[3 * c] = r <= 0 ? 0 : r >= 255 ? 255 : (uint8_t)r;
            out[3 * c + 1] = g <= 0 ? 0 : g >= 255 ? 255 : (uint8_t)g;
            out[3 * c + 2] = b <= 0 ? 0 : b >= 255 ? 255 : (uint8_t)b;
        }
    }
    free_taps(vertical);
    free_taps(horizontal);
    free(line);
    return status;
}

/* Area-resample the box (y, x, h, w) — fractional, in pixels of the contiguous rows x cols x 3 image src —
 * to the contiguous out_h x out_w x 3 image dst. The box must lie inside the image. */
int cropjpeg_resize_area(const uint8_t *src, int64_t rows, int64_t cols, double y, double x, double h,
                         double w, uint8_t *dst, int64_t out_h, int64_t out_w) {
    struct taps vertical = {0}, horizontal = {0};
    int status = box_taps(build_taps, rows, cols, y, x, h, w, out_h, out_w, &vertical, &horizontal);
    if (status == RS_ERR_ARGS) return status;
    return resample(src, cols, &vertical, &horizontal, status, dst, out_h, out_w);
}

typedef float rgbx __attribute__((vector_size(16))); /* GCC/Clang vector: R, G, B, unused */

static uint8_t to_uint8(float v) { /* v + 0.5 truncated: round to nearest, clamped */
    return v <= 0.5f ? 0 : v >= 254.5f ? 255 : (uint8_t)(v + 0.5f);
}

/* Bicubic-resample the box (y, x, h, w), as cropjpeg_resize_area. The horizontal pass goes first and its
 * rows are stored rounded to uint8, like PIL's: where the kernel overshoots, that clamp changes the result
 * by several levels, so the order matters for agreeing with PIL. */
int cropjpeg_resize_bicubic(const uint8_t *src, int64_t rows, int64_t cols, double y, double x, double h,
                            double w, uint8_t *dst, int64_t out_h, int64_t out_w) {
    struct taps vertical = {0}, horizontal = {0};
    int status = box_taps(build_cubic_taps, rows, cols, y, x, h, w, out_h, out_w, &vertical, &horizontal);
    if (status == RS_ERR_ARGS) return status;
    /* Source rows [first_row, first_row + n_rows) are used (the taps are increasing). */
    int64_t first_row = 0, n_rows = 0;
    if (status == RS_OK) {
        first_row = vertical.first[0];
        n_rows = vertical.first[out_h - 1] + vertical.count[out_h - 1] - first_row;
    }
    /* The horizontal pass reads source columns [first_col, first_col + span) (the taps are increasing). */
    int64_t first_col = status == RS_OK ? horizontal.first[0] : 0, span = 0;
    if (status == RS_OK) span = horizontal.first[out_w - 1] + horizontal.count[out_w - 1] - first_col;
    uint8_t *narrow = status == RS_OK ? malloc((size_t)n_rows * out_w * 3) : NULL;
    float *line = status == RS_OK ? malloc(sizeof(float) * out_w * 3) : NULL;
    /* One source row as floats, plus one so that every pixel can be loaded as 4 floats. */
    float *pixels = status == RS_OK ? malloc(sizeof(float) * (span * 3 + 1)) : NULL;
    if (status == RS_OK && (!narrow || !line || !pixels)) status = RS_ERR_MEMORY;

    /* Horizontal pass, one pixel (3 channels, plus one ignored lane) per vector operation: the same float
     * operations in the same order as per channel, so the same results, three times fewer instructions. */
    for (int64_t r = 0; status == RS_OK && r < n_rows; r++) {
        const uint8_t *row = src + ((first_row + r) * cols + first_col) * 3;
        for (int64_t k = 0; k < span * 3; k++) pixels[k] = row[k];
        pixels[span * 3] = 0;
        uint8_t *out = narrow + r * out_w * 3;
        for (int64_t c = 0; c < out_w; c++) {
            const float *p = pixels + (horizontal.first[c] - first_col) * 3;
            const float *wc = horizontal.weight + c * horizontal.stride;
            rgbx sum = {0, 0, 0, 0}, pixel;
            for (int64_t t = 0; t < horizontal.count[c]; t++, p += 3) {
                memcpy(&pixel, p, sizeof pixel);
                sum += wc[t] * pixel;
            }
            out[3 * c] = to_uint8(sum[0]);
            out[3 * c + 1] = to_uint8(sum[1]);
            out[3 * c + 2] = to_uint8(sum[2]);
        }
    }
    /* Vertical pass: the inner loop runs along whole rows, which the compiler vectorises. */
    for (int64_t o = 0; status == RS_OK && o < out_h; o++) {
        const float *weights = vertical.weight + o * vertical.stride;
        for (int64_t k = 0; k < out_w * 3; k++) line[k] = 0;
        for (int64_t t = 0; t < vertical.count[o]; t++) {
            const uint8_t *row = narrow + (vertical.first[o] + t - first_row) * out_w * 3;
            const float weight = weights[t];
            for (int64_t k = 0; k < out_w * 3; k++) line[k] += weight * row[k];
        }
        uint8_t *out = dst + o * out_w * 3;
        for (int64_t k = 0; k < out_w * 3; k++) out[k] = to_uint8(line[k]);
    }
    free_taps(&vertical);
    free_taps(&horizontal);
    free(narrow);
    free(line);
    free(pixels);
    return status;
}
