// Everything CSystemIO offers is in its header; SwiftPM builds a C target from at least one source.
#include "CSystemIO.h"
