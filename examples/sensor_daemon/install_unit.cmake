# Installs ntkd.service with the paths of the actual prefix (run by `cmake --install`,
# where CMAKE_INSTALL_PREFIX is the final prefix, --prefix included). The source file
# names the default prefix, /usr/local.
#   expects: NTK_UNIT_SOURCE, NTK_UNIT_BINDIR, NTK_UNIT_DOCDIR (relative or absolute)
foreach(dir BINDIR DOCDIR)
  if(IS_ABSOLUTE "${NTK_UNIT_${dir}}")
    set(full_${dir} "${NTK_UNIT_${dir}}")
  else()
    set(full_${dir} "${CMAKE_INSTALL_PREFIX}/${NTK_UNIT_${dir}}")
  endif()
endforeach()
file(READ "${NTK_UNIT_SOURCE}" unit)
string(REPLACE "/usr/local/bin/ntkd" "${full_BINDIR}/ntkd" unit "${unit}")
string(REPLACE "/usr/local/share/doc/ntkstream" "${full_DOCDIR}" unit "${unit}")
set(target "$ENV{DESTDIR}${full_DOCDIR}/examples/ntkd.service")
message(STATUS "Installing: ${target}")
file(WRITE "${target}" "${unit}")
