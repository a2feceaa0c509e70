#include "twin.hpp"

int main(int argc, char** argv) { return earlyad::train_main(argc, argv); }
