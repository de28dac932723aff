# Makefile of a GPU bundle (made by `make gpu-bundle`; see README, "GPU check").
#   make gpu-check OUT=DIR      run every GPU check, logs and JSON into DIR (within 8 minutes)
OUT ?= gpu-check-out
.PHONY: gpu-check
gpu-check:
	bench/gpu/gpu_check.sh $(OUT)
