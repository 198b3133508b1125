"""Typed payloads: the type URL and FileDescriptorSet of a generated class (what a client
registers with busd so tools decode what it sends), and classes built at run time from the
FileDescriptorSets busd keeps (``$sys.type``), so a Python program decodes what a C++ program
sent without its .proto.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, symbol_database

from ._wire import TYPE_URL_PREFIX


def type_url(descriptor):
    return TYPE_URL_PREFIX + descriptor.full_name


def descriptor_set(descriptor):
    """The FileDescriptorSet of the file that defines ``descriptor``'s type and of every file
    it imports, imports first (as the C++ client's register_type sends it)."""
    out = descriptor_pb2.FileDescriptorSet()
    seen = set()

    def add(file):
        if file.name in seen:
            return
        seen.add(file.name)
        for dep in file.dependencies:
            add(dep)
        file.CopyToProto(out.file.add())

    add(descriptor.file)
    return out


def generated_class(full_name):
    """The class of a type some imported _pb2 module defines, or None."""
    try:
        return symbol_database.Default().GetSymbol(full_name)
    except KeyError:
        return None


class TypePool:
    """Classes built from FileDescriptorSets, in a pool of their own: a file busd sent never
    collides with one an imported _pb2 module put in protobuf's default pool."""

    def __init__(self):
        self._pool = descriptor_pool.DescriptorPool()
        self._factory = message_factory.MessageFactory(self._pool)
        self._classes = {}

    def find(self, full_name):
        cls = self._classes.get(full_name)
        if cls is None:
            try:
                descriptor = self._pool.FindMessageTypeByName(full_name)
            except KeyError:
                return None
            cls = self._classes[full_name] = self._factory.GetPrototype(descriptor)
        return cls

    def add(self, serialized_set):
        """Adds the files of a serialized FileDescriptorSet (imports first; files the pool
        has already are skipped). Raises ValueError for a set that does not build."""
        files = descriptor_pb2.FileDescriptorSet()
        try:
            files.ParseFromString(serialized_set)
            for file in files.file:
                try:
                    self._pool.FindFileByName(file.name)
                except KeyError:
                    self._pool.Add(file)
        except Exception as e:  # DecodeError, TypeError from the pool: a broken set
            raise ValueError(f"not a usable FileDescriptorSet: {e}") from e
