"""Running one program over many devices and hosts.

mesh          the ("data", "fsdp", "tensor") device mesh from `MeshConfig`
rules         the logical-axis -> mesh-axis table and the shardings of params, batches and KV caches
sharded_init  parameters created directly in their shards
memory        bytes per device, read from the arrays' shards
distributed   start-up of the JAX distributed runtime (`DistributedConfig`) and process identity
host_data     per-process rows -> global batches, and global arrays -> numpy on every host
"""
