# bus_add_proto(<target> <file.proto>... [IMPORT_DIRS <dir>...])
#
# Generates C++ for the .proto files (protoc, from find_package(Protobuf)) and adds it to
# <target>, with the generated headers on its include path (PUBLIC, build tree only). A file is
# named by its path below the first IMPORT_DIRS entry that holds it, else by its file name, as
# protoc names it: shop/v1/order.proto under IMPORT_DIRS proto/ generates shop/v1/order.pb.h.
# bus's own .proto files (bus/v1/envelope.proto, ...) are always importable. <target> must link
# bus::bus (or protobuf::libprotobuf) for the generated code to link. Call it in the directory
# that defines <target> (the generated sources are that directory's).
#
# Installed with the package (busConfig.cmake includes it), and used by bus for its own protos,
# so the helper users get is the one bus is built with. Not FindProtobuf's protobuf_generate:
# before CMake 3.28 that names its outputs by their path relative to the calling directory,
# which is not where protoc writes them unless the .proto files sit below that directory.
include_guard(GLOBAL)

# Where bus's own .proto files are, set by whoever includes this file: busConfig.cmake (the
# installed ones) or bus's top-level CMakeLists.txt (the sources). A global property, not a
# variable, so a call from any directory sees it.
function(bus_add_proto target)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "" "IMPORT_DIRS")
  if(NOT TARGET ${target})
    message(FATAL_ERROR "bus_add_proto: no target named '${target}'")
  endif()
  if(NOT arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "bus_add_proto(${target}): no .proto files")
  endif()
  if(NOT TARGET protobuf::protoc)
    message(FATAL_ERROR "bus_add_proto: protoc not found (Debian: protobuf-compiler)")
  endif()
  get_property(bus_protos GLOBAL PROPERTY BUS_PROTO_DIR)

  set(out_dir ${CMAKE_CURRENT_BINARY_DIR}/${target}_proto)
  set(import_dirs)
  foreach(dir IN LISTS arg_IMPORT_DIRS)
    get_filename_component(dir ${dir} ABSOLUTE)
    list(APPEND import_dirs ${dir})
  endforeach()
  set(protos)
  foreach(proto IN LISTS arg_UNPARSED_ARGUMENTS)
    get_filename_component(proto ${proto} ABSOLUTE)
    list(APPEND protos ${proto})
  endforeach()

  set(generated)
  foreach(proto IN LISTS protos)
    # The import root: the first import dir that holds the file, else its own directory.
    get_filename_component(root ${proto} DIRECTORY)
    foreach(dir IN LISTS import_dirs bus_protos)
      cmake_path(IS_PREFIX dir ${proto} NORMALIZE inside)
      if(inside)
        set(root ${dir})
        break()
      endif()
    endforeach()
    file(RELATIVE_PATH name ${root} ${proto})
    string(REGEX REPLACE "\\.proto$" "" stem ${name})
    set(outputs ${out_dir}/${stem}.pb.h ${out_dir}/${stem}.pb.cc)
    set(includes -I${root})
    foreach(dir IN LISTS import_dirs bus_protos)
      list(APPEND includes -I${dir})
    endforeach()
    list(REMOVE_DUPLICATES includes)
    # Every file of the call is a dependency: an import among them changes what is generated.
    add_custom_command(OUTPUT ${outputs}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${out_dir}
      COMMAND protobuf::protoc --cpp_out=${out_dir} ${includes} ${proto}
      DEPENDS ${protos} protobuf::protoc
      COMMENT "protoc ${name}"
      VERBATIM)
    list(APPEND generated ${outputs})
  endforeach()

  target_sources(${target} PRIVATE ${generated})
  # Generated code is not the project's to fix: its warnings would fail a -Werror build.
  set_source_files_properties(${generated} PROPERTIES COMPILE_OPTIONS -w)
  target_include_directories(${target} PUBLIC $<BUILD_INTERFACE:${out_dir}>)
endfunction()
