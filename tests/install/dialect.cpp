// Compiled with the public headers, under the same flags: proves those flags are the ones this
// test is about, so the test fails if they stop being so rather than passing for nothing.

// The standard comes from bus::bus (the project sets none; GCC's own default is C++17).
static_assert(__cplusplus >= 202002L, "bus::bus does not bring C++20 to its users");

// CMake's default dialect keeps GNU extensions, which predefine `unix`: a public name spelt so
// would not compile here, as it would not in a user's build.
#ifndef unix
#error "not a GNU dialect: the headers are not compiled as a user compiles them"
#endif
