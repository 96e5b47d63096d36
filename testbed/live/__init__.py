"""The live plane: real model replicas, gateway, supervisor and chaos proxy on 127.0.0.1."""
