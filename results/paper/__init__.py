"""The papers' tables (the CSVs beside this file; SOURCES.md says where each number is printed), installed with
the code as the data package `modbench.paper`: `modbench.suite.project.paper_table` reads them wherever the suite
is installed. Nothing to import."""
