"""pyvirtiofsd: a virtio-fs vhost-user device backend."""
__version__ = "0.1.0"
