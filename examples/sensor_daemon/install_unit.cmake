# Installs ntkd.service with the paths of the actual prefix (run by `cmake --install`,
# where CMAKE_INSTALL_PREFIX is the final prefix, --prefix included). The source file
# names the default prefix, /usr/local; only its ExecStart= and Documentation= lines
# change. file(INSTALL) applies DESTDIR and records the file in install_manifest.txt.
#   expects: NTK_UNIT_SOURCE, NTK_UNIT_SCRATCH (a file in the build tree),
#            NTK_UNIT_BINDIR, NTK_UNIT_DOCDIR (relative to the prefix, or absolute)
foreach(dir BINDIR DOCDIR)
  if(IS_ABSOLUTE "${NTK_UNIT_${dir}}")
    set(full_${dir} "${NTK_UNIT_${dir}}")
  else()
    set(full_${dir} "${CMAKE_INSTALL_PREFIX}/${NTK_UNIT_${dir}}")
  endif()
endforeach()
# systemd splits ExecStart= at spaces unless quoted, and a URL has no spaces.
set(exec "${full_BINDIR}/ntkd")
if(exec MATCHES " ")
  set(exec "\"${exec}\"")
endif()
string(REPLACE " " "%20" doc_url "file://${full_DOCDIR}/README.md")
file(READ "${NTK_UNIT_SOURCE}" unit)
string(REPLACE "\nExecStart=/usr/local/bin/ntkd " "\nExecStart=${exec} " unit "${unit}")
string(REPLACE "\nDocumentation=file:///usr/local/share/doc/ntkstream/README.md\n"
               "\nDocumentation=${doc_url}\n" unit "${unit}")
get_filename_component(scratch_dir "${NTK_UNIT_SCRATCH}" DIRECTORY)
file(MAKE_DIRECTORY "${scratch_dir}")
file(WRITE "${NTK_UNIT_SCRATCH}" "${unit}")
file(INSTALL DESTINATION "${full_DOCDIR}/examples" TYPE FILE FILES "${NTK_UNIT_SCRATCH}"
     RENAME ntkd.service)
