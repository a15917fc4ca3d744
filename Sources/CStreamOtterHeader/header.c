/* Exposes include/streamotter.h to the Swift ABI layer (the types of the C ABI). */
