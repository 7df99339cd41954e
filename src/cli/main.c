#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("nemoq %s\n", NEMOQ_VERSION);
        return 0;
    }
    fprintf(stderr, "usage: nemoq COMMAND ...\n");
    return 2;
}
