"""TensorFlow's checkpoint format, bytes in and bytes out.

Nothing here touches files, devices or threads: ``sstable`` lays out the ``.index`` table,
``bundle`` its header and entries, ``strings`` the string-tensor payload, ``slices`` the
keys of partitioned tensors, ``objgraph`` the object graph, ``statefile`` the ``checkpoint``
text file. ``docs/format.md`` maps each byte to the code that writes it.
"""
