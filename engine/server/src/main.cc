// inferbox-engine: one model replica in its own process (engine_main.cc).
#include "inferbox/engine/server/engine_main.h"

int main(int argc, char** argv) {
  return inferbox::engine::EngineMain(argc, argv, {});
}
