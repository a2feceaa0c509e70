// The C++ twin of earlyad's Python trainer. Only the two entry points are declared here, so
// the mains compile without LibTorch's headers; everything else lives in twin.cpp.
#pragma once

namespace earlyad {

/// train_app: train ClassifierCNN from a run file (see twin.cpp, "train_app").
int train_main(int argc, char** argv);

/// test_app: predictions from a checkpoint, and the parity probes the tests call.
int test_main(int argc, char** argv);

}  // namespace earlyad
