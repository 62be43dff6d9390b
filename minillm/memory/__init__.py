"""KV memory: sizing, the contiguous (pre-paging) allocator, and trace replay vs the paged one."""
