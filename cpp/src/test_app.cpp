#include "twin.hpp"

int main(int argc, char** argv) { return earlyad::test_main(argc, argv); }
