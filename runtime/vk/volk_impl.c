/* The volk loader (Debian's libvulkan-volk-dev ships it as source: volk.h + volk.c). */
#define VOLK_IMPLEMENTATION
#include <volk.h>
