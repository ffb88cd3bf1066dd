#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <linux/stat.h>
#define R(tag, expr) do { errno=0; long _r=(expr); printf("%-34s %ld %s\n", tag, _r, _r<0?strerror(errno):""); } while(0)
int main(){
  struct stat s; struct statx sx;
  char *ro = mmap(0,4096,PROT_READ,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  char *two = mmap(0,8192,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); mprotect(two+4096,4096,PROT_READ);
  char *un = mmap(0,4096,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); munmap(un,4096);
  R("stat data ok", stat("/data/a.txt",&s)); printf("  size=%ld mode=%o\n",(long)s.st_size,s.st_mode);
  R("stat data ro buf", syscall(SYS_stat,"/data/a.txt",ro));
  R("stat data unmapped buf", syscall(SYS_stat,"/data/a.txt",un));
  R("stat data straddle buf", syscall(SYS_stat,"/data/a.txt",two+4096-64));
  R("stat host ro buf", syscall(SYS_stat,"/etc/passwd",ro));
  R("stat host straddle", syscall(SYS_stat,"/etc/passwd",two+4096-64));
  R("stat NULL path", syscall(SYS_stat,0,&s));
  R("stat unmapped path", syscall(SYS_stat,un,&s));
  R("stat NULL buf data", syscall(SYS_stat,"/data/a.txt",0));
  R("stat NULL buf host", syscall(SYS_stat,"/etc/passwd",0));
  R("lstat data", syscall(SYS_lstat,"/data/a.txt",&s));
  R("stat missing data", syscall(SYS_stat,"/data/nope",&s));
  R("stat data/a.txt/", syscall(SYS_stat,"/data/a.txt/",&s));
  R("stat empty path", syscall(SYS_stat,"",&s));
  int d=open("/data",O_RDONLY|O_DIRECTORY); int f=open("/data/a.txt",O_RDONLY);
  R("fstatat empty nofl on datadir", syscall(SYS_newfstatat,d,"",&s,0));
  R("fstatat AT_EMPTY_PATH datadir", syscall(SYS_newfstatat,d,"",&s,AT_EMPTY_PATH)); printf("  mode=%o\n",s.st_mode);
  R("fstatat AT_EMPTY_PATH datafile", syscall(SYS_newfstatat,f,"",&s,AT_EMPTY_PATH)); printf("  size=%ld\n",(long)s.st_size);
  R("fstatat AT_EMPTY_PATH NULL", syscall(SYS_newfstatat,f,0,&s,AT_EMPTY_PATH));
  R("fstatat badflags", syscall(SYS_newfstatat,d,"a.txt",&s,0x40000000));
  R("fstatat rel datadir", syscall(SYS_newfstatat,d,"a.txt",&s,0)); printf("  size=%ld\n",(long)s.st_size);
  R("fstatat rel on file fd", syscall(SYS_newfstatat,f,"x",&s,0));
  R("fstatat badfd rel", syscall(SYS_newfstatat,999,"x",&s,0));
  R("fstatat badfd abs", syscall(SYS_newfstatat,999,"/data/a.txt",&s,0));
  R("fstatat -1 AT_EMPTY_PATH", syscall(SYS_newfstatat,-1,"",&s,AT_EMPTY_PATH));
  R("fstatat AT_FDCWD AT_EMPTY_PATH", syscall(SYS_newfstatat,AT_FDCWD,"",&s,AT_EMPTY_PATH));
  R("fstat data", syscall(SYS_fstat,f,&s));
  R("fstat data ro", syscall(SYS_fstat,f,ro));
  R("fstat badfd", syscall(SYS_fstat,999,&s));
  R("fstat -100", syscall(SYS_fstat,-100,&s));
  R("fstat data NULL", syscall(SYS_fstat,f,0));
  R("statx data", syscall(SYS_statx,AT_FDCWD,"/data/a.txt",0,STATX_ALL,&sx)); printf("  mask=%x size=%llu\n",sx.stx_mask,(unsigned long long)sx.stx_size);
  R("statx mask 0", syscall(SYS_statx,AT_FDCWD,"/data/a.txt",0,0,&sx)); printf("  mask=%x\n",sx.stx_mask);
  R("statx mask RESERVED", syscall(SYS_statx,AT_FDCWD,"/data/a.txt",0,0x80000000u,&sx));
  R("statx mask ffffffff", syscall(SYS_statx,AT_FDCWD,"/data/a.txt",0,0xffffffffu,&sx));
  R("statx flags bad", syscall(SYS_statx,AT_FDCWD,"/data/a.txt",0x40000000,STATX_ALL,&sx));
  R("statx sync type both", syscall(SYS_statx,AT_FDCWD,"/data/a.txt",0x6000,STATX_ALL,&sx));
  R("statx force sync", syscall(SYS_statx,AT_FDCWD,"/data/a.txt",AT_STATX_FORCE_SYNC,STATX_ALL,&sx));
  R("statx empty path fd", syscall(SYS_statx,f,"",AT_EMPTY_PATH,STATX_ALL,&sx)); printf("  size=%llu\n",(unsigned long long)sx.stx_size);
  R("statx NULL path fd", syscall(SYS_statx,f,0,AT_EMPTY_PATH,STATX_ALL,&sx));
  R("statx NULL path noflag", syscall(SYS_statx,f,0,0,STATX_ALL,&sx));
  R("statx ro buf", syscall(SYS_statx,AT_FDCWD,"/data/a.txt",0,STATX_ALL,ro));
  R("statx straddle", syscall(SYS_statx,AT_FDCWD,"/data/a.txt",0,STATX_ALL,two+4096-100));
  R("statx host straddle", syscall(SYS_statx,AT_FDCWD,"/etc/passwd",0,STATX_ALL,two+4096-100));
  R("statx dir datadir rel", syscall(SYS_statx,d,"sub",0,STATX_ALL,&sx)); printf("  mode=%o\n",sx.stx_mode);
  R("statx nofollow data", syscall(SYS_statx,AT_FDCWD,"/data/a.txt",AT_SYMLINK_NOFOLLOW,STATX_BASIC_STATS,&sx));
  R("stat longpath", ({char *p=malloc(5000); memset(p,'a',4999); p[0]='/'; p[4999]=0; syscall(SYS_stat,p,&s);}));
  R("stat data longpath", ({char *p=malloc(5000); memset(p,'a',4999); memcpy(p,"/data/",6); p[4999]=0; syscall(SYS_stat,p,&s);}));
  R("stat path unterminated at end", ({char *p=two+4096-6; memcpy(p,"/data/",6); syscall(SYS_stat,p,&s);}));
  return 0;
}
