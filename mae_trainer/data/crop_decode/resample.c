/* Area resampling of a fractional box of an RGB image: what cv::resize(INTER_AREA) does to a whole-pixel
 * ROI, for a box whose edges fall between pixels.
 *
 * Why: a DCT-scaled decode (1/d) turns the crop box [x, x+w) into [x/d, (x+w)/d) scaled pixels, which is
 * rarely whole. Rounding the box to whole scaled pixels and using cv::resize shifts and stretches the crop
 * by up to half a scaled pixel (d/2 source pixels) per edge, visibly so on fine texture; integrating the
 * exact box keeps the geometry of FFCV's full-resolution crop.
 *
 * Each output pixel is the mean of the source over its box (source pixel k covers [k, k+1)), computed
 * separably in float like OpenCV's area path: outputs differ from cv::resize's by at most 1, rarely. It
 * is also about twice as fast as OpenCV's general (non-integer factor) area path, so the decoder uses it
 * for every downscale, scaled decode or not.
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

/* Resample the box (y, x, h, w) — fractional, in pixels of the contiguous rows x cols x 3 image src —
 * to the contiguous out_h x out_w x 3 image dst. The box must lie inside the image. */
int cropjpeg_resize_area(const uint8_t *src, int64_t rows, int64_t cols, double y, double x, double h,
                         double w, uint8_t *dst, int64_t out_h, int64_t out_w) {
    const double slack = 1e-6; /* tolerate float rounding of box edges computed by the caller */
    if (rows < 1 || cols < 1 || out_h < 1 || out_w < 1 || !(h > 0) || !(w > 0) || y < -slack ||
        x < -slack || y + h > rows + slack || x + w > cols + slack)
        return RS_ERR_ARGS;

    struct taps vertical = {0}, horizontal = {0};
    int status = build_taps(&vertical, y, h, rows, out_h);
    if (status == RS_OK) status = build_taps(&horizontal, x, w, cols, out_w);
    /* Only the source columns [first_col, first_col + span) that the box touches are summed. */
    int64_t first_col = status == RS_OK ? horizontal.first[0] : 0, span = 1;
    for (int64_t c = 0; status == RS_OK && c < out_w; c++)
        if (horizontal.first[c] + horizontal.count[c] - first_col > span)
            span = horizontal.first[c] + horizontal.count[c] - first_col;
    float *line = malloc(sizeof(float) * span * 3); /* one output row, not yet narrowed */
    if (!line) status = RS_ERR_MEMORY;

    /* Vertical pass first: its inner loop runs along whole rows, which the compiler vectorises; the
     * horizontal pass (a few taps per pixel) then works on out_h rows only. */
    for (int64_t o = 0; status == RS_OK && o < out_h; o++) {
        const float *weights = vertical.weight + o * vertical.stride;
        for (int64_t k = 0; k < span * 3; k++) line[k] = 0;
        for (int64_t t = 0; t < vertical.count[o]; t++) {
            const uint8_t *row = src + ((vertical.first[o] + t) * cols + first_col) * 3;
            const float weight = weights[t];
            for (int64_t k = 0; k < span * 3; k++) line[k] += weight * row[k];
        }
        uint8_t *out = dst + o * out_w * 3;
        for (int64_t c = 0; c < out_w; c++) {
            const float *p = line + (horizontal.first[c] - first_col) * 3;
            const float *wc = horizontal.weight + c * horizontal.stride;
            float r = 0.5f, g = 0.5f, b = 0.5f; /* + 0.5: round to nearest when truncating below */
            for (int64_t t = 0; t < horizontal.count[c]; t++, p += 3) {
                r += wc[t] * p[0];
                g += wc[t] * p[1];
                b += wc[t] * p[2];
            }
            out[3 * c] = r <= 0 ? 0 : r >= 255 ? 255 : (uint8_t)r;
            out[3 * c + 1] = g <= 0 ? 0 : g >= 255 ? 255 : (uint8_t)g;
            out[3 * c + 2] = b <= 0 ? 0 : b >= 255 ? 255 : (uint8_t)b;
        }
    }
    free_taps(&vertical);
    free_taps(&horizontal);
    free(line);
    return status;
}
