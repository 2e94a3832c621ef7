# Per-target warning and sanitizer settings (fmt/spdlog habit: functions, not globals).

option(NTK_WERROR "Treat warnings as errors" OFF)
option(NTK_SANITIZE "Build with AddressSanitizer and UndefinedBehaviorSanitizer" OFF)

function(ntk_target_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
                                           -Wold-style-cast -Wcast-align -Woverloaded-virtual)
  if(NTK_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

# Sanitizers are applied to everything we build (libraries, tests, tools) so that
# instrumented and uninstrumented code never mix inside one binary.
if(NTK_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer
                      -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()
