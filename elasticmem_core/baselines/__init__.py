"""The methods compared with ElasticMem, each one module, and the registry `methods.METHODS` that names them all."""
