#include <png.h>
// PNG_IMAGE_SIZE and friends are function-like macros Swift cannot import.
static inline unsigned long mocod_png_image_size(const png_image *image) { return PNG_IMAGE_SIZE(*image); }
