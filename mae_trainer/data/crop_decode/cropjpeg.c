/* Crop decode: decode only the part of a JPEG that a RandomResizedCrop keeps (DailyMAE's "ESSL" trick).
 *
 * FFCV decodes the whole image, then crops and resizes. Here libjpeg does the cropping:
 *   - jpeg_crop_scanline: inverse DCT, upsampling and colour conversion only for the crop's columns;
 *   - jpeg_skip_scanlines: the rows above the crop are entropy-decoded but never reconstructed;
 *   - decoding stops after the crop's last row, so nothing below it is touched;
 *   - DCT scaling (1/2, 1/4, 1/8) when the crop is at least twice the output size: the scaled inverse
 *     DCTs are much cheaper and the result is resized down anyway.
 * The caller (numba code in decoder.py) resizes the crop out of the returned region to the output size:
 * with FFCV's own resize at scale 1 (bit-identical to the stock decoder), with resample.c's exact-box
 * area filter when scaled.
 *
 * Plain C with no Python API: it is built as a setuptools Extension only to get compiled and installed
 * with the package, and is loaded with ctypes (numba calls ctypes function pointers in nopython mode).
 */
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h> /* jpeglib.h needs FILE and size_t first */
#include <string.h>

#include <jpeglib.h>

/* Return codes (kept in sync with decoder.py). */
#define CJ_OK 0
#define CJ_CORRUPT 1     /* decoded, but libjpeg warned about corrupt/truncated data (like FFCV, keep it) */
#define CJ_ERR_JPEG (-1) /* libjpeg gave up: not a JPEG, unsupported colour space, ... */
#define CJ_ERR_ARGS (-2) /* crop box outside the image, or an empty output size */
#define CJ_ERR_BUFFER (-3) /* the region does not fit in the destination buffer */
#define CJ_ERR_SIZE (-5)   /* the JPEG's size is not the expected one (FFCV's metadata) */

struct error_manager {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
};

/* libjpeg's default error_exit calls exit(): jump back to cropjpeg_decode instead. */
static void error_exit(j_common_ptr cinfo) {
    longjmp(((struct error_manager *)cinfo->err)->jump, 1);
}

/* Warnings are still counted (num_warnings) by the default emit_message; only the printing goes. */
static void output_message(j_common_ptr cinfo) { (void)cinfo; }

/* Largest DCT scaling denominator (8, 4, 2 or 1) that keeps the scaled crop at least the output size.
 * Only 1/2^k: libjpeg also scales by M/8 for any M, but its 3x3, 5x5, 6x6 and 7x7 inverse DCTs are scalar
 * code while 8x8, 4x4 and 2x2 have SIMD ones, so an M/8 decode costs more than a full one (measured here,
 * libjpeg-turbo 2.1, a 500x500 q90 photo: 8/8 0.87 ms, 7/8 1.95, 6/8 1.45, 5/8 1.39, 4/8 0.79 ms). */
static unsigned pick_denominator(int64_t crop_h, int64_t crop_w, int64_t out_h, int64_t out_w) {
    unsigned denom = 8;
    while (denom > 1 && (crop_w < (int64_t)denom * out_w || crop_h < (int64_t)denom * out_h)) denom >>= 1;
    return denom;
}

/* Pixel k of the 1/denom-scaled image covers full-scale pixels [k*denom, (k+1)*denom), so the full-scale
 * span [start, start+length) is [start/denom, (start+length)/denom) there: keep the whole scaled pixels that
 * cover it (clamped to the scaled image, whose last pixel may be partial). The caller resamples the exact
 * fractional span out of them (resample.c). */
static void scaled_span(int64_t start, int64_t length, unsigned denom, int64_t limit, JDIMENSION *first,
                        JDIMENSION *count) {
    int64_t begin = start / denom;
    int64_t end = (start + length + denom - 1) / denom;
    if (end > limit) end = limit;
    *first = (JDIMENSION)begin;
    *count = (JDIMENSION)(end - begin);
}

/* Decode the crop box (y, x, h, w), given in full-scale pixels of the height x width JPEG, into dst
 * (dst_size bytes). The DCT scale is chosen from the output size (out_h, out_w). On success region[] =
 * {rows, cols, denominator, first row, first col}: dst holds the contiguous rows x cols x 3 RGB image of
 * the scaled pixels [first row, first row + rows) x [first col, first col + cols) of the 1/denominator
 * scaled image. They cover the box; rows match it (whole scaled pixels), columns usually extend past it
 * (libjpeg decodes whole iMCU columns): the caller crops them away while resizing, as FFCV crops a full
 * decode, rather than paying a copy here.
 * Never writes more than rows*cols*3 <= dst_size bytes of dst; never reads outside src[0, src_size). */
int cropjpeg_decode(const uint8_t *src, uint64_t src_size, int64_t height, int64_t width, int64_t y,
                    int64_t x, int64_t h, int64_t w, int64_t out_h, int64_t out_w, uint8_t *dst,
                    uint64_t dst_size, int64_t *region) {
    struct jpeg_decompress_struct cinfo;
    struct error_manager err;
    volatile int status = CJ_OK; /* volatile: set between setjmp and a possible longjmp */
    JDIMENSION row0, rows, col0, cols, left, span, done;
    JSAMPARRAY row_pointers;

    memset(region, 0, 5 * sizeof(int64_t));
    if (src_size == 0 || out_h < 1 || out_w < 1 || y < 0 || x < 0 || h < 1 || w < 1) return CJ_ERR_ARGS;

    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = error_exit;
    err.pub.output_message = output_message;
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return CJ_ERR_JPEG;
    }
    jpeg_create_decompress(&cinfo);
    /* jpeg_mem_src takes an unsigned long: 64 bits on LP64, and FFCV samples are far smaller anyway. */
    jpeg_mem_src(&cinfo, src, (unsigned long)src_size);
    jpeg_read_header(&cinfo, TRUE);

    /* FFCV drew the crop for the size in its metadata; a file of another size is left to FFCV's decoder. */
    if ((int64_t)cinfo.image_height != height || (int64_t)cinfo.image_width != width) {
        status = CJ_ERR_SIZE;
        goto finish;
    }
    if (y + h > height || x + w > width) {
        status = CJ_ERR_ARGS;
        goto finish;
    }
    /* Grayscale is expanded to RGB by libjpeg-turbo's colour converter; CMYK/YCCK make it error out. */
    cinfo.out_color_space = JCS_RGB;
    /* FFCV's imdecode passes TJFLAG_FASTDCT: the same integer IDCT, so unscaled crops are identical. */
    cinfo.dct_method = JDCT_IFAST;
    cinfo.scale_num = 1;
    cinfo.scale_denom = pick_denominator(h, w, out_h, out_w);
    jpeg_calc_output_dimensions(&cinfo);
    scaled_span(y, h, cinfo.scale_denom, cinfo.output_height, &row0, &rows);
    scaled_span(x, w, cinfo.scale_denom, cinfo.output_width, &col0, &cols);

    jpeg_start_decompress(&cinfo);
    /* Ask for one column more on each side (when there is one): fancy chroma upsampling treats the edges
     * of a partial row like image edges, so the columns the caller keeps match a full decode exactly.
     * libjpeg moves the start left to an iMCU boundary and widens the span to match. */
    left = col0 > 0 ? col0 - 1 : 0;
    span = (col0 + cols < cinfo.output_width ? col0 + cols + 1 : col0 + cols) - left;
    jpeg_crop_scanline(&cinfo, &left, &span);
    if ((uint64_t)rows * span * 3 > dst_size) {
        status = CJ_ERR_BUFFER;
        goto finish;
    }
    /* Rows go straight into dst: a row buffer plus a copy per row cost a third of a full decode. */
    row_pointers = (JSAMPARRAY)(*cinfo.mem->alloc_small)((j_common_ptr)&cinfo, JPOOL_IMAGE,
                                                         rows * sizeof(JSAMPROW));
    for (JDIMENSION r = 0; r < rows; r++) row_pointers[r] = dst + (size_t)r * span * 3;
    if (row0 > 0) jpeg_skip_scanlines(&cinfo, row0);
    for (done = 0; done < rows;) {
        JDIMENSION got = jpeg_read_scanlines(&cinfo, row_pointers + done, rows - done);
        if (got == 0) { /* only a suspending data source returns none; never loop forever */
            status = CJ_ERR_JPEG;
            goto finish;
        }
        done += got;
    }

    region[0] = rows;
    region[1] = span;
    region[2] = cinfo.scale_denom;
    region[3] = row0;
    region[4] = left;
    if (err.pub.num_warnings > 0) status = CJ_CORRUPT;

finish:
    /* The rows below the crop are never read: destroying also aborts the unfinished decompression; pool
     * allocations (row_pointers) go with it. */
    jpeg_destroy_decompress(&cinfo);
    return status;
}
